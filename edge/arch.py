"""Architecture adapters: where a model's FFNs are, how to swap in an ACM, what output to distil.

An adapter is registered under the Hugging Face `model_type`s it serves; `arch_for(model)` finds it.
A new architecture is supported (and tested by every test parametrized over ARCHS: tests/test_acm.py, tests/test_depth.py, tests/test_export.py) by registering an adapter here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import EdgeError
from edge.parts import parts
from edge.registry import Registry

ARCHS: Registry["Arch"] = Registry("architecture")

# Hugging Face activation names -> edge.acm.ACTIVATIONS names
_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
        "silu": "silu", "swish": "silu"}


@dataclass(frozen=True)
class Ffn:
    """One FFN  x -> fc2(act(fc1(x)))  found in a layer."""
    fc1: nn.Linear
    act: str
    fc2: nn.Linear


@dataclass(frozen=True)
class Heads:
    """A layer's multi-head attention projections: q, k, v map d -> H * head_dim, o maps back."""
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    head_dim: int

    @property
    def count(self) -> int:
        return self.q.out_features // self.head_dim

    def columns(self, kept) -> torch.Tensor:
        """The features of heads `kept` (original indices, in the order given) in q/k/v's outputs and o's input."""
        dh = self.head_dim
        return torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in kept])


@dataclass(frozen=True)
class SelfAttention:
    """Where a family keeps a layer's attention: the layer's attribute, the names of its q, k, v and
    output projections, and the attribute holding its head count."""
    attribute: str
    projections: tuple[str, str, str, str]
    count: str


class NoHeads(nn.Module):
    """The attention of a layer whose every head was pruned: what is left is the output projection's
    bias (and, where the family's attention module ends in the residual's norm, that norm), so the
    layer keeps its residual path. Called as the module it replaces; returns (output, None)."""

    def __init__(self, bias: torch.Tensor | None, d: int, norm: nn.Module | None = None):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(d), requires_grad=False)
        self.norm = norm

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.norm is not None:
            return self.norm(hidden_states + self.bias), None
        return torch.zeros_like(hidden_states) + self.bias, None


class Arch:
    """Base adapter. Subclasses say where the layers are and how their FFN is wired."""

    name = ""
    model_types: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the batch keys the model reads, in export order
    seq_inputs: tuple[str, ...] = ()  # those whose dim 1 is the token dimension (dynamic on export)
    ctx_inputs: tuple[str, ...] = ()  # those the context is made from (the routed export feeds them on)
    # the config's fields of the hidden size, the head count, the FFN width and the layer count (edge.multilevel
    # builds a smaller model of the same family from them); `also_hidden`: fields that are the hidden size too
    # where they equal it (ELECTRA's embedding_size)
    size_fields: tuple[str, str, str, str] = ("hidden_size", "num_attention_heads", "intermediate_size",
                                              "num_hidden_layers")
    also_hidden: tuple[str, ...] = ()

    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def ffn(self, layer: nn.Module, config) -> Ffn:
        raise NotImplementedError

    def install(self, layer: nn.Module, acm: nn.Module) -> None:
        """Replace the layer's FFN (both linears and the activation) by `acm`."""
        raise NotImplementedError

    # where a layer's attention is, for a family whose attention module holds q, k, v, o and a head_dim
    # (the layer adds the residual): heads, set_heads and drop_attention below read it
    self_attention: "SelfAttention | None" = None

    def heads(self, layer: nn.Module) -> Heads | None:
        """The layer's attention projections, or None where every head was pruned (NoHeads)."""
        a = getattr(layer, self.self_attention.attribute)
        if isinstance(a, NoHeads):
            return None
        q, k, v, o = (getattr(a, n) for n in self.self_attention.projections)
        return Heads(q, k, v, o, a.head_dim)

    def set_heads(self, layer: nn.Module, count: int) -> None:
        """Tell the layer's attention module it now has `count` heads (its projections were sliced)."""
        setattr(getattr(layer, self.self_attention.attribute), self.self_attention.count, count)

    def drop_attention(self, layer: nn.Module) -> None:
        """Replace the layer's attention by NoHeads (every head pruned; the residual path stays)."""
        o = self.heads(layer).o
        setattr(layer, self.self_attention.attribute, NoHeads(o.bias, o.out_features))

    def output(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The backbone's output (B, D) through the model's own forward: the readout, then the task
        head if the model has one (edge.add_head). Exits and routers are not taken here: a model
        with them runs through edge.forward.output / edge.forward.run."""
        return _task(model, self.hf_output(model, batch))

    def hf_output(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The readout through the model's own (Hugging Face) forward (no task head)."""
        raise NotImplementedError

    def token_mask(self, batch: dict, shape: torch.Size) -> torch.Tensor:
        """(B, T) bool: which positions are real tokens (padding does not count towards the budget)."""
        return torch.ones(shape[:2], dtype=torch.bool)

    def tiny(self, model_type: str, seed: int = 0) -> tuple[nn.Module, dict]:
        """A tiny random model of `model_type` (one of self.model_types) and an example batch."""
        raise NotImplementedError

    # --- layer by layer (edge.forward runs exits and skips through these) ---------------------------
    # A context `ctx` is a dict of per-sequence tensors (batch dimension first) that the layers need;
    # it always holds "tokens": the (B, T) bool mask of real tokens.

    def embed(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """Hidden states entering the first layer (B, T, d) and the context."""
        raise NotImplementedError

    def context(self, batch: dict, h: torch.Tensor) -> dict:
        """The context of hidden states h (B, T, d) from the batch's `ctx_inputs`."""
        return {"tokens": torch.ones(h.shape[:2], dtype=torch.bool)}

    def attention(self, layer: nn.Module, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """The layer's attention sub-block, residual included: (B, T, d) -> (B, T, d)."""
        raise NotImplementedError

    def feed_forward(self, layer: nn.Module, h: torch.Tensor, ctx: dict, ffn=None) -> torch.Tensor:
        """The rest of the layer after attention (FFN or ACM, residual included). ffn: a function
        that replaces the installed ACM on its input (the export graph's pure, gathered ACM)."""
        raise NotImplementedError

    def head(self, model: nn.Module, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """From the last layer's hidden states to the output that `output` returns, (B, D)."""
        return _task(model, self.readout(model, h, ctx))

    def readout(self, model: nn.Module, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """The model's own readout of the last layer's hidden states (pooling, norm, its classifier)."""
        raise NotImplementedError

    def pool(self, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """One vector per sequence (B, d) for exit heads and routers: the mean over real tokens."""
        m = ctx["tokens"][:, None, :].to(h.dtype)  # (B, 1, T)
        # as batched matmuls (m h: the sum over tokens; m m^T: their count), which XNNPACK runs: an
        # exported sum would run on the portable kernels and cut the backend's delegates apart
        return (torch.bmm(m, h) / torch.bmm(m, m.transpose(1, 2)).clamp(min=1.0)).flatten(1)

    def output_kind(self, model: nn.Module) -> str:
        """"logits" (a classifier: exits use softmax confidence) or "embedding" (compared by cosine)."""
        return "logits" if task_head(model) is not None else self.readout_kind(model)

    def output_dim(self, model: nn.Module) -> int:
        """D, the size of the output."""
        head = task_head(model)
        return head.linear.out_features if head is not None else self.readout_dim(model)

    def readout_kind(self, model: nn.Module) -> str:
        return "embedding"

    def readout_dim(self, model: nn.Module) -> int:
        return self.dims(model)[0]  # the registered families' embeddings have the hidden size

    def unit_output(self, model: nn.Module) -> bool:
        """Whether the output embedding is L2-normalized (exit heads then normalize too)."""
        return False

    def dims(self, model: nn.Module) -> tuple[int, int]:
        """(d, F): hidden size and FFN width of the original layers."""
        raise NotImplementedError

    def fixed_flops(self, model: nn.Module, ctx: dict) -> float:
        """FLOPs per sequence outside the layers (patch or conv embeddings, classifier, task head)."""
        head = task_head(model)
        return self.readout_flops(model, ctx) + (head.flops() if head is not None else 0.0)

    def readout_flops(self, model: nn.Module, ctx: dict) -> float:
        """The model's own FLOPs per sequence outside the layers (embeddings, its classifier)."""
        return 0.0


def check_layer_numbers(what: str, numbers, n_layers: int, allow_last: bool) -> None:
    """Layer numbers (1-based) that exist: 1..L, or 1..L-1 where the last layer has nothing after it."""
    top = n_layers if allow_last else n_layers - 1
    bad = [a for a in numbers if not 1 <= a <= top]
    if bad:
        raise EdgeError(f"{what} {bad} do not exist: this model has {n_layers} layers, so use numbers in 1..{top}")


def task_head(model: nn.Module):
    """The task head edge.add_head put on `model` (an edge.head.TaskHead), or None."""
    return parts(model).module("head")


def _task(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    head = task_head(model)
    return y if head is None else head(y)


def unit(x: torch.Tensor) -> torch.Tensor:
    """F.normalize(x, dim=-1) for (B, D), the norm as a batched matmul: exported, XNNPACK runs it (a
    sum would run on the portable kernels between its delegates)."""
    b = x.shape[0]
    return x / torch.bmm(x.reshape(b, 1, -1), x.reshape(b, -1, 1)).flatten(1).sqrt().clamp(min=1e-12)


def act_name(hf_name) -> str:
    if not isinstance(hf_name, str) or hf_name not in _ACT:
        raise EdgeError(f"unsupported FFN activation {hf_name!r}; supported: {', '.join(sorted(_ACT))}")
    return _ACT[hf_name]


def model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def supported_model_types() -> list[str]:
    return sorted(mt for _, a in ARCHS.items() for mt in a.model_types)


def arch_for(model: nn.Module) -> Arch:
    mt = model_type(model)
    for _, arch in ARCHS.items():
        if mt in arch.model_types:
            return arch
    what = f"architecture {mt!r}" if mt else f"{type(model).__name__} (no Hugging Face config.model_type)"
    raise EdgeError(f"unsupported {what}; supported: {', '.join(supported_model_types())}")


class BertFamily(Arch):
    """BERT-style encoders: layer.intermediate (dense + act) then layer.output.dense (+ residual LN)."""

    name = "bert"
    model_types = ("bert", "roberta", "electra")
    inputs = seq_inputs = ("input_ids", "attention_mask")
    ctx_inputs = ("attention_mask",)
    also_hidden = ("embedding_size",)

    def layers(self, model):
        return list(model.base_model.encoder.layer)

    def ffn(self, layer, config):
        return Ffn(layer.intermediate.dense, act_name(config.hidden_act), layer.output.dense)

    def install(self, layer, acm):
        layer.intermediate = acm  # BertOutput then adds the residual and applies LayerNorm
        layer.output.dense = nn.Identity()

    def heads(self, layer):
        a = layer.attention
        if isinstance(a, NoHeads):
            return None
        return Heads(a.self.query, a.self.key, a.self.value, a.output.dense, a.self.attention_head_size)

    def set_heads(self, layer, count):
        s = layer.attention.self
        s.num_attention_heads, s.all_head_size = count, count * s.attention_head_size

    def drop_attention(self, layer):
        out = layer.attention.output  # BertSelfOutput: LayerNorm(dense(attention) + h)
        layer.attention = NoHeads(out.dense.bias, out.dense.out_features, out.LayerNorm)

    def hf_output(self, model, batch):
        # sentence-transformers convention (all-MiniLM): mean pooling over real tokens, then L2 norm
        hidden = model(**batch).last_hidden_state  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def token_mask(self, batch, shape):
        return batch["attention_mask"].bool()

    def embed(self, model, batch):
        base = model.base_model
        h = base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        return h, self.context(batch, h)

    def context(self, batch, h):
        tokens = batch["attention_mask"].bool()  # (B, T)
        # additive mask over keys (B, 1, 1, T), the form every attention implementation accepts
        # (0 for a token, the dtype's lowest for padding, as arithmetic: no where/full between a backend's ops)
        bias = (batch["attention_mask"][:, None, None, :].to(h.dtype) - 1.0) * torch.finfo(h.dtype).max
        return {"tokens": tokens, "mask": bias}

    def attention(self, layer, h, ctx):
        return layer.attention(h, ctx["mask"])[0]  # post-LN: LayerNorm(h + attention(h))

    def feed_forward(self, layer, h, ctx, ffn=None):
        return layer.feed_forward_chunk(h) if ffn is None else layer.output(ffn(h), h)

    def readout(self, model, h, ctx):
        return unit(self.pool(h, ctx))

    def unit_output(self, model):
        return True

    def dims(self, model):
        return model.config.hidden_size, model.config.intermediate_size

    def tiny(self, model_type, seed=0):
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                   embedding_size=32)
        ids = torch.randint(3, 100, (2, 12))
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0  # one padded sequence
        # eager attention and no pooler: torch's FLOP counter then sees exactly what edge counts
        extra = {} if model_type == "electra" else {"add_pooling_layer": False}  # electra has no pooler
        model = AutoModel.from_config(cfg, attn_implementation="eager", **extra)
        return model.eval(), {"input_ids": ids, "attention_mask": mask}


class VitFamily(Arch):
    """ViT-style encoders: layer.mlp is the whole FFN (fc1, activation_fn, fc2)."""

    name = "vit"
    model_types = ("vit",)
    inputs = ("pixel_values",)

    def layers(self, model):
        return list(model.base_model.layers)

    def ffn(self, layer, config):
        return Ffn(layer.mlp.fc1, act_name(config.hidden_act), layer.mlp.fc2)

    def install(self, layer, acm):
        layer.mlp = acm

    self_attention = SelfAttention("attention", ("q_proj", "k_proj", "v_proj", "o_proj"), "num_attention_heads")

    def hf_output(self, model, batch):
        out = model(**batch)
        if getattr(out, "logits", None) is not None:
            return out.logits
        return out.last_hidden_state[:, 0]  # the CLS token

    def embed(self, model, batch):
        h = model.base_model.embeddings(batch["pixel_values"])
        return h, self.context(batch, h)

    def attention(self, layer, h, ctx):
        return h + layer.attention(layer.layernorm_before(h))[0]

    def feed_forward(self, layer, h, ctx, ffn=None):
        return h + (ffn or layer.mlp)(layer.layernorm_after(h))

    def readout(self, model, h, ctx):
        cls = model.base_model.layernorm(self.pool(h, ctx))  # LayerNorm is per token: only CLS needs it
        return model.classifier(cls) if hasattr(model, "classifier") else cls

    def pool(self, h, ctx):
        return h[:, :1].flatten(1)  # the CLS token, as the classifier reads it (a slice: XNNPACK has no select)

    def readout_kind(self, model):
        return "logits" if hasattr(model, "classifier") else "embedding"

    def readout_dim(self, model):
        return model.classifier.out_features if hasattr(model, "classifier") else model.config.hidden_size

    def dims(self, model):
        return model.config.hidden_size, model.config.intermediate_size

    def readout_flops(self, model, ctx):
        c = model.config
        patches = (c.image_size // c.patch_size) ** 2
        flops = 2 * c.num_channels * c.patch_size**2 * c.hidden_size * patches
        if hasattr(model, "classifier"):
            flops += 2 * c.hidden_size * model.classifier.out_features
        return float(flops)

    def tiny(self, model_type, seed=0):
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(seed)
        cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
        return ViTModel(cfg, add_pooling_layer=False).eval(), {"pixel_values": torch.randn(2, 1, 16, 16)}


class WhisperEncoderFamily(Arch):
    """Whisper-style audio encoders: fc1, activation_fn, fc2 are called inline by the layer."""

    name = "whisper"
    model_types = ("whisper",)
    inputs = ("input_features",)
    size_fields = ("d_model", "encoder_attention_heads", "encoder_ffn_dim", "encoder_layers")

    def layers(self, model):
        return list(getattr(model, "encoder", model).layers)

    def ffn(self, layer, config):
        return Ffn(layer.fc1, act_name(config.activation_function), layer.fc2)

    def install(self, layer, acm):
        layer.fc1, layer.activation_fn, layer.fc2 = acm, nn.Identity(), nn.Identity()

    self_attention = SelfAttention("self_attn", ("q_proj", "k_proj", "v_proj", "out_proj"), "num_heads")

    def hf_output(self, model, batch):
        enc = getattr(model, "encoder", model)
        return enc(**batch).last_hidden_state.mean(1)

    def embed(self, model, batch):
        enc = getattr(model, "encoder", model)
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(batch["input_features"])))).permute(0, 2, 1)  # (B, T, d)
        h = x + enc.embed_positions.weight[: x.shape[1]]
        return h, self.context(batch, h)

    def attention(self, layer, h, ctx):
        return h + layer.self_attn(hidden_states=layer.self_attn_layer_norm(h), attention_mask=None)[0]

    def feed_forward(self, layer, h, ctx, ffn=None):
        ffn = ffn or (lambda x: layer.fc2(layer.activation_fn(layer.fc1(x))))
        return h + ffn(layer.final_layer_norm(h))

    def readout(self, model, h, ctx):
        return getattr(model, "encoder", model).layer_norm(h).mean(1)

    def dims(self, model):
        return model.config.d_model, model.config.encoder_ffn_dim

    def readout_flops(self, model, ctx):
        enc = getattr(model, "encoder", model)
        t1 = enc.config.max_source_positions * enc.conv2.stride[0]  # frames after conv1 (stride 1)
        t2 = enc.config.max_source_positions
        d, mel = enc.config.d_model, enc.config.num_mel_bins
        return float(2 * mel * 3 * d * t1 + 2 * d * 3 * d * t2)

    def tiny(self, model_type, seed=0):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        torch.manual_seed(seed)
        cfg = WhisperConfig(num_mel_bins=8, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                            encoder_ffn_dim=64, max_source_positions=16, decoder_layers=1,
                            decoder_attention_heads=2, decoder_ffn_dim=64, attn_implementation="eager")
        return WhisperEncoder(cfg).eval(), {"input_features": torch.randn(2, 8, 32)}


for _arch in (BertFamily(), VitFamily(), WhisperEncoderFamily()):
    ARCHS.register(_arch.name)(_arch)
