"""The attention every export uses: transformers' eager attention on 3-D batched matmuls, which XNNPACK
takes whole (`exportable` puts it on a model)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

def bmm_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """transformers' eager attention (matmul, softmax, matmul) on 3-D batched matmuls, (B, H, T, d) as
    (B*H, T, d): a 4-D matmul decomposes to expand_copy + bmm, and ExecuTorch runs the expand_copy
    on the portable kernels between XNNPACK's delegates. The same numbers; measured on MiniLM (128
    tokens, 1 thread, ExecuTorch): 24 portable kernels fewer, 0.97x the time, lowering in 0.55x."""
    b, h, t, d = query.shape
    s = key.shape[2]
    scale = d ** -0.5 if scaling is None else scaling
    w = torch.bmm(query.reshape(b * h, t, d), key.reshape(b * h, s, d).transpose(1, 2)) * scale
    if attention_mask is not None:  # (b, 1 or h, 1 or t, s), added in 3-D: a view (b, h, t, s) has two token
        m = attention_mask  # sizes, which XNNPACK cannot reshape to, and would cut its delegate in three
        m = m if m.shape[0] * m.shape[1] == 1 else m.expand(b, h, -1, -1)
        w = w + m.reshape(-1, m.shape[2], s)
    w = nn.functional.dropout(w.softmax(-1), p=dropout, training=module.training)
    out = torch.bmm(w, value.reshape(b * h, s, value.shape[-1]))
    return out.view(b, h, t, -1).transpose(1, 2).contiguous(), None


ATTENTION = "edge_bmm"  # bmm_attention's name in transformers' AttentionInterface


def exportable(model: nn.Module) -> nn.Module:
    """The model with edge's attention (bmm_attention), copied if it used another. Not SDPA: its
    decomposition keeps a "safe softmax" (where/any over heads x T x T) that XNNPACK does not take,
    2.5 ms against 1.0 ms per MiniLM layer on ExecuTorch (128 tokens, 1 thread)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", ATTENTION) in (ATTENTION, None):
        return model
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, bmm_attention)  # (here, not at import: export needs no transformers)
    model = copy.deepcopy(model)
    model.set_attn_implementation(ATTENTION)
    return model
