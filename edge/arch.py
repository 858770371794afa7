"""Architecture adapters: where a model's FFNs are, how to swap in an ACM, what output to distil.

An adapter is registered under the Hugging Face `model_type`s it serves; `arch_for(model)` finds it.
A new architecture is supported (and tested by tests/test_arch.py) by registering an adapter here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import EdgeError
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


class Arch:
    """Base adapter. Subclasses say where the layers are and how their FFN is wired."""

    name = ""
    model_types: tuple[str, ...] = ()

    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def ffn(self, layer: nn.Module, config) -> Ffn:
        raise NotImplementedError

    def install(self, layer: nn.Module, acm: nn.Module) -> None:
        """Replace the layer's FFN (both linears and the activation) by `acm`."""
        raise NotImplementedError

    def output(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The model's final output that conversion must preserve, (B, D)."""
        raise NotImplementedError

    def token_mask(self, batch: dict, shape: torch.Size) -> torch.Tensor:
        """(B, T) bool: which positions are real tokens (padding does not count towards the budget)."""
        return torch.ones(shape[:2], dtype=torch.bool)

    def tiny(self, model_type: str, seed: int = 0) -> tuple[nn.Module, dict]:
        """A tiny random model of `model_type` (one of self.model_types) and an example batch."""
        raise NotImplementedError


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

    def layers(self, model):
        return list(model.base_model.encoder.layer)

    def ffn(self, layer, config):
        return Ffn(layer.intermediate.dense, act_name(config.hidden_act), layer.output.dense)

    def install(self, layer, acm):
        layer.intermediate = acm  # BertOutput then adds the residual and applies LayerNorm
        layer.output.dense = nn.Identity()

    def output(self, model, batch):
        # sentence-transformers convention (all-MiniLM): mean pooling over real tokens, then L2 norm
        hidden = model(**batch).last_hidden_state  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def token_mask(self, batch, shape):
        return batch["attention_mask"].bool()

    def tiny(self, model_type, seed=0):
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                   embedding_size=32)
        ids = torch.randint(3, 100, (2, 12))
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0  # one padded sequence
        return AutoModel.from_config(cfg).eval(), {"input_ids": ids, "attention_mask": mask}


class VitFamily(Arch):
    """ViT-style encoders: layer.mlp is the whole FFN (fc1, activation_fn, fc2)."""

    name = "vit"
    model_types = ("vit",)

    def layers(self, model):
        return list(model.base_model.layers)

    def ffn(self, layer, config):
        return Ffn(layer.mlp.fc1, act_name(config.hidden_act), layer.mlp.fc2)

    def install(self, layer, acm):
        layer.mlp = acm

    def output(self, model, batch):
        out = model(**batch)
        if getattr(out, "logits", None) is not None:
            return out.logits
        return out.last_hidden_state[:, 0]  # the CLS token

    def tiny(self, model_type, seed=0):
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(seed)
        cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
        return ViTModel(cfg).eval(), {"pixel_values": torch.randn(2, 1, 16, 16)}


class WhisperEncoderFamily(Arch):
    """Whisper-style audio encoders: fc1, activation_fn, fc2 are called inline by the layer."""

    name = "whisper"
    model_types = ("whisper",)

    def layers(self, model):
        return list(getattr(model, "encoder", model).layers)

    def ffn(self, layer, config):
        return Ffn(layer.fc1, act_name(config.activation_function), layer.fc2)

    def install(self, layer, acm):
        layer.fc1, layer.activation_fn, layer.fc2 = acm, nn.Identity(), nn.Identity()

    def output(self, model, batch):
        enc = getattr(model, "encoder", model)
        return enc(**batch).last_hidden_state.mean(1)

    def tiny(self, model_type, seed=0):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        torch.manual_seed(seed)
        cfg = WhisperConfig(num_mel_bins=8, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                            encoder_ffn_dim=64, max_source_positions=16, decoder_layers=1,
                            decoder_attention_heads=2, decoder_ffn_dim=64)
        return WhisperEncoder(cfg).eval(), {"input_features": torch.randn(2, 8, 32)}


for _arch in (BertFamily(), VitFamily(), WhisperEncoderFamily()):
    ARCHS.register(_arch.name)(_arch)
