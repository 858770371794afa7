"""The eager forward of an adaptive model: layer by layer, it really stops a sequence at an exit,
really skips an attention (or a block) and runs each ACM's learners on the tokens that chose them (the
work is not computed and masked: it is not computed), and counts the FLOPs each sequence spent.
`output` is the model's output whatever parts it has; `quality` compares outputs."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.adaptive import adaptive_of
from edge.arch import arch_for
from edge.exits import exit_heads

from edge.parts import parts
from edge.skips import routers


def output(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's final output (B, D): through `run` when it has exits or routers (which it really
    takes), else through the adapter (its own forward and any task head)."""
    if exit_heads(model) or routers(model):
        return run(model, batch)[0]
    return arch_for(model).output(model, batch)


@dataclass
class Trace:
    """What each sequence of one `run` did and spent (FLOPs, torch's counting convention)."""

    flops: torch.Tensor  # (B,) FLOPs spent
    full_flops: torch.Tensor  # (B,) FLOPs of the original model on the same sequence
    exit_layer: torch.Tensor  # (B,) number of layers run (L when no exit was taken)
    skipped: torch.Tensor  # (B, L) bool: layer's attention (or block) skipped
    pooled: list[torch.Tensor] = field(default_factory=list)  # per layer (B, d), when collected
    layer_flops: list[torch.Tensor] = field(default_factory=list)  # per layer (B,) spent so far, when collected
    exits: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (y, conf)


def attention_flops(d: int, t: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Q, K, V, O projections plus scores and weighted sum, for sequences of t real tokens, with
    `width` = heads * head size (d unless heads were pruned)."""
    w = d if width is None else width
    return 8 * d * w * t + 4 * w * t * t


def layer_flops(arch, layer: nn.Module, config, d: int) -> tuple[int, int]:
    """(attention width, FFN width) of one layer as it is now (heads or neurons may be pruned); the
    FFN width is 0 where an ACM replaced the FFN (its FLOPs are its choices')."""
    heads = arch.heads(layer)
    width = 0 if heads is None else heads.q.out_features
    return width, 0 if adaptive_of(layer) is not None else arch.ffn(layer, config).fc1.out_features


def run(model: nn.Module, batch: dict, soft: bool = False, exits: bool = True, collect: bool = False,
        ) -> tuple[torch.Tensor, Trace]:
    """Run `model` layer by layer with its exits, routers and ACMs; returns (output (B, D), trace).

    soft: router-tuning form: every layer runs and its attention output is scaled by the router score
      (differentiable); exits are not taken. exits=False: run to the end. collect: keep every layer's
      pooled hidden state and FLOPs so far, and with exits=False every exit head's (output,
      confidence), in the trace: exit-head training and `take_exits`."""
    arch = arch_for(model)
    layers = arch.layers(model)
    heads, gates = exit_heads(model), routers(model)
    exit_t = parts(model).config("exits").threshold if heads else 1.0
    skip_cfg = parts(model).config("skips")
    d, f = arch.dims(model)
    h, ctx = arch.embed(model, batch)  # (B, T, d)
    b, n = h.shape[0], len(layers)
    lengths = ctx["tokens"].sum(1).to(torch.float64)  # (B,)
    fixed = arch.fixed_flops(model, ctx)
    trace = Trace(flops=torch.full((b,), fixed, dtype=torch.float64),
                  full_flops=fixed + n * (attention_flops(d, lengths) + 4 * d * f * lengths),
                  exit_layer=torch.full((b,), n, dtype=torch.long), skipped=torch.zeros(b, n, dtype=torch.bool))
    idx = torch.arange(b)  # the sequences still running
    out: torch.Tensor | None = None
    for i, layer in enumerate(layers, 1):
        t = lengths[idx]
        router = gates.get(i)
        w, f = layer_flops(arch, layer, model.config, d)
        if router is None:
            h = _ffn(arch, layer, arch.attention(layer, h, ctx), ctx, trace, idx, t, d, f)
            trace.flops[idx] += attention_flops(d, t, w)
        else:
            r = router(arch.pool(h, ctx))  # (b,)
            trace.flops[idx] += router.flops()
            if soft:
                full = arch.attention(layer, h, ctx)
                if skip_cfg.target == "attention":
                    h = _ffn(arch, layer, h + r[:, None, None] * (full - h), ctx, trace, idx, t, d, f)
                else:
                    h = h + r[:, None, None] * (_ffn(arch, layer, full, ctx, trace, idx, t, d, f) - h)
                trace.skipped[idx, i - 1] = r < skip_cfg.threshold  # what the hard form would do
                trace.flops[idx] += attention_flops(d, t, w)  # the soft form computes everything
            else:
                keep = r >= skip_cfg.threshold
                trace.skipped[idx[~keep], i - 1] = True
                h = _apply(lambda x, c: arch.attention(layer, x, c), h, ctx, keep)
                if skip_cfg.target == "attention":
                    h = _ffn(arch, layer, h, ctx, trace, idx, t, d, f)
                else:
                    h = _apply(lambda x, c, sel=keep: _ffn(arch, layer, x, c, trace, idx[sel], t[sel], d, f),
                               h, ctx, keep)
                trace.flops[idx[keep]] += attention_flops(d, t[keep], w)
        head = heads.get(i)
        if collect:
            trace.pooled.append(arch.pool(h, ctx))
            trace.layer_flops.append(trace.flops.clone())
            if head is not None and not exits:
                trace.exits[i] = head(trace.pooled[-1])
        if head is not None and exits and not soft:
            y, conf = head(arch.pool(h, ctx))
            trace.flops[idx] += head.flops()
            leave = conf >= exit_t
            if leave.any():
                out = _put(out, b, idx[leave], y[leave])
                trace.exit_layer[idx[leave]] = i
                stay = ~leave
                idx, h, ctx = idx[stay], h[stay], _take(ctx, stay)
                if not len(idx):
                    return out, trace
    out = _put(out, b, idx, arch.head(model, h, ctx))
    return out, trace


def take_exits(model: nn.Module, out: torch.Tensor, trace: Trace, threshold: float,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `run` with the exits at `threshold` gives, from one `run(exits=False, collect=True)`:
    (output (B, D), FLOPs (B,), exit layer (B,)). A sequence's path up to its exit does not depend on
    the threshold, so one full pass answers every threshold (the budget sweep uses this)."""
    out, flops, layer = out.clone(), trace.flops.clone(), trace.exit_layer.clone()
    heads = exit_heads(model)
    left = torch.zeros_like(layer, dtype=torch.bool)
    head_cost = 0
    for a in sorted(heads):
        y, conf = trace.exits[a]
        head_cost += heads[a].flops()
        leave = (conf >= threshold) & ~left
        out[leave], flops[leave], layer[leave] = y[leave], trace.layer_flops[a - 1][leave] + head_cost, a
        left |= leave
    flops[~left] += head_cost  # those who stayed to the end paid for every head on the way
    return out, flops, layer


def _ffn(arch, layer, h, ctx, trace, idx, t, d, f):
    """The layer's feed-forward on all of h, adding its FLOPs (the ACM's real choices) to the trace."""
    out = arch.feed_forward(layer, h, ctx)
    acm = adaptive_of(layer)
    if acm is None:
        trace.flops[idx] += 4 * d * f * t
    else:
        k = acm.last_k.reshape(ctx["tokens"].shape).to(torch.float64)  # (b, T) learners run
        trace.flops[idx] += (acm.flops(k) * ctx["tokens"]).sum(1)
    return out


def _take(ctx: dict, sel: torch.Tensor) -> dict:
    return {k: v[sel] for k, v in ctx.items()}


def _apply(fn, h, ctx, sel):
    """h with fn applied to the sequences where sel is True; the others pass through unchanged."""
    if sel.all():
        return fn(h, ctx)
    out = h.clone()
    if sel.any():
        out[sel] = fn(h[sel], _take(ctx, sel))
    return out


def _put(out, b, idx, y):
    if out is None:
        out = y.new_zeros((b, *y.shape[1:]))
    out[idx] = y
    return out


def distil_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss (B,) of an output against the target output of the same kind."""
    if kind == "logits":
        return F.kl_div(out.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return 1 - F.cosine_similarity(out, target, dim=-1)


def quality(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) agreement with the target: cosine for embeddings, same top-1 class for logits."""
    if kind == "logits":
        return (out.argmax(-1) == target.argmax(-1)).to(out.dtype)
    return F.cosine_similarity(out, target, dim=-1)
