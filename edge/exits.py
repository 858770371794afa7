"""Early exits: a head after chosen layers that gives the final output's kind (an embedding, or a
classifier's logits) and a confidence; a sequence leaves at the first exit whose confidence is at least
the threshold (0: everybody leaves at the first exit; 1: nobody leaves). Layers are numbered from 1:
an exit `after=3` sits after the third layer. Training: edge.depth.add_exits; the forward that really
stops: edge.forward.run."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edge.arch import arch_for, check_layer_numbers, unit
from edge.config import Config, config, integer, real, sequence_of, setting
from edge.errors import EdgeError
from edge.parts import Knob, Transform, attach, parts, register

BELOW_ONE = 1.0 - 1e-6  # confidences and router scores are clamped here: threshold 1 is never met


@config("exits")
@dataclass(frozen=True)
class ExitConfig(Config):
    """Exit heads after layers `after` (1..L-1). Only the heads train: each projection is first fitted
    in closed form (least squares to the final output on the cached training states), then `steps`
    Adam steps at `lr` train the confidence head (embedding model) or refine the head (classifier).
    A classifier's exits given the task's labels are instead fitted to the labels (add_exits).

    hidden: width of the confidence head of an embedding model (a classifier's confidence is its
    maximum softmax probability). threshold: see the module docstring."""

    after: tuple[int, ...] = setting(sequence_of(integer(1), nonempty=True), (2, 3, 4, 5))
    threshold: float = setting(real(0, 1), 1.0)
    hidden: int = setting(integer(1), 64)
    steps: int = setting(integer(0), 300)
    lr: float = setting(real(0, low_open=True), 1e-3)

    def check(self):
        if list(self.after) != sorted(set(self.after)):
            raise EdgeError(f"ExitConfig.after must be increasing without repeats, got {list(self.after)}")


class ExitHead(nn.Module):
    """Pooled hidden state (B, d) -> (output (B, D), confidence (B,)) in the final output's space."""

    def __init__(self, d: int, out_dim: int, kind: str, unit: bool, hidden: int):
        super().__init__()
        self.kind, self.unit = kind, unit
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, out_dim)
        if kind == "embedding":  # predicts the cosine of its output to the final output
            self.confidence = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))
            if out_dim == d:
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(d))
                    self.proj.bias.zero_()

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(pooled)
        y = self.proj(z)
        if self.kind == "logits":
            conf = y.softmax(-1).amax(-1)
        else:
            conf = torch.sigmoid(self.confidence(z).flatten())
            if self.unit:
                y = unit(y)
        return y, conf.clamp(max=BELOW_ONE)

    def flops(self) -> int:
        f = 2 * self.proj.in_features * self.proj.out_features
        if self.kind == "embedding":
            f += sum(2 * m.in_features * m.out_features for m in self.confidence if hasattr(m, "in_features"))
        return f


def exit_heads(model: nn.Module) -> dict[int, ExitHead]:
    """{layer number: its exit head} of `model` ({} without exits)."""
    heads = parts(model).module("exits")
    return {int(k): m for k, m in heads.items()} if heads is not None else {}


def install_exits(model: nn.Module, config: ExitConfig) -> None:
    """Attach untrained exit heads (in place); used by add_exits and by edge.load."""
    arch = arch_for(model)
    check_layer_numbers("ExitConfig.after layers", config.after, len(arch.layers(model)), allow_last=False)
    d, _ = arch.dims(model)
    kind, unit = arch.output_kind(model), arch.unit_output(model)
    out_dim = arch.output_dim(model)
    attach(model).add("exits", config, nn.ModuleDict({str(a): ExitHead(d, out_dim, kind, unit, config.hidden)
                                                     for a in config.after}))


def _exit_cases(model: nn.Module, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    cases = []
    for j, a in enumerate(sorted(exit_heads(model))):
        t = full.clone()
        t[j] = 0.0  # confidence >= 0 always: leave here (the earlier exits are closed)
        cases.append((f"exit after {a}", t))
    return cases


EXIT_KNOB = Knob(
    "exit_thresholds", "exits",
    own=lambda m: torch.full((len(exit_heads(m)),), float(parts(m).config("exits").threshold)),
    full=lambda m: torch.ones(len(exit_heads(m))),
    cases=_exit_cases,
    plan=lambda m: [{"after": a, "knob": "exit_thresholds", "index": j} for j, a in enumerate(sorted(exit_heads(m)))])

register(Transform("exits", ExitConfig, install_exits, after=("head",), knob=EXIT_KNOB, export_order=0))
