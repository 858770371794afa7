"""MindSkip routers (Router-Tuning, He et al., arXiv 2410.13184): a router before a layer scores the
sequence, and the layer's attention (or the whole block) runs when score >= threshold (0: always run,
the full model; 1: always skip). Router-tuning: edge.depth.add_skips; the forward that really skips:
edge.forward.run."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edge.arch import arch_for, check_layer_numbers
from edge.config import Config, config, integer, one_of, optional, real, sequence_of, setting
from edge.exits import BELOW_ONE
from edge.parts import Knob, Transform, attach, parts, register

SKIP_TARGETS = ("attention", "block")


@config("skips")
@dataclass(frozen=True)
class SkipConfig(Config):
    """MindSkip routers on `layers` (None: every layer) that skip the `target` ("attention" or
    "block") per sequence. Router-tuning trains only the routers, on at most `samples` sequences for
    `epochs` passes, with loss = distillation of the original output + `capacity_weight` *
    (average kept fraction - (1 - `skip_rate`))^2."""

    layers: tuple[int, ...] | None = setting(optional(sequence_of(integer(1), nonempty=True)), None)
    target: str = setting(one_of(*SKIP_TARGETS), "attention")
    skip_rate: float = setting(real(0, 1), 0.5)
    threshold: float = setting(real(0, 1), 0.5)
    capacity_weight: float = setting(real(0), 1.0)
    samples: int = setting(integer(1), 1000)
    epochs: int = setting(integer(1), 1)
    lr: float = setting(real(0, low_open=True), 1e-2)


class Router(nn.Module):
    """MindSkip router: sigmoid(linear(LayerNorm(mean over tokens of the layer input))) -> (B,)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.linear = nn.Linear(d, 1)
        with torch.no_grad():  # start close to "always run" so that router-tuning starts from the model
            self.linear.weight.normal_(std=0.01)
            self.linear.bias.fill_(3.0)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.norm(pooled)).flatten()).clamp(max=BELOW_ONE)  # (a view: squeeze is no XNNPACK op)

    def flops(self) -> int:
        return 2 * self.linear.in_features


def routers(model: nn.Module) -> dict[int, Router]:
    """{layer number: its router} of `model` ({} without skips)."""
    rs = parts(model).module("skips")
    return {int(k): m for k, m in rs.items()} if rs is not None else {}


def install_skips(model: nn.Module, config: SkipConfig) -> None:
    """Attach routers (in place); used by add_skips and by edge.load."""
    arch = arch_for(model)
    n = len(arch.layers(model))
    layers = config.layers or tuple(range(1, n + 1))
    check_layer_numbers("SkipConfig.layers", layers, n, allow_last=True)
    d, _ = arch.dims(model)
    attach(model).add("skips", config, nn.ModuleDict({str(i): Router(d) for i in layers}))


def _skip_cases(model: nn.Module, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    cases = []
    for j, i in enumerate(sorted(routers(model))):
        t = full.clone()
        t[j] = 1.0  # score >= 1 never: skip
        cases.append((f"skip {i}", t))
    return cases + [("skip all", torch.ones_like(full))]


SKIP_KNOB = Knob(
    "skip_thresholds", "routers",
    own=lambda m: torch.full((len(routers(m)),), float(parts(m).config("skips").threshold)),
    full=lambda m: torch.zeros(len(routers(m))),
    cases=_skip_cases,
    plan=lambda m: [{"layer": i, "target": parts(m).config("skips").target, "knob": "skip_thresholds", "index": j}
                    for j, i in enumerate(sorted(routers(m)))])

register(Transform("skips", SkipConfig, install_skips, knob=SKIP_KNOB, export_order=1))
