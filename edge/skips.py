"""MindSkip routers (Router-Tuning, He et al., arXiv 2410.13184): a router before a layer scores the
sequence, and the layer's attention (or the whole block) runs when score >= threshold (0: always run,
the full model; 1: always skip). Router-tuning: edge.depth.add_skips; the forward that really skips:
edge.forward.run."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edge.arch import arch_for, check_layer_numbers
from edge.errors import EdgeError
from edge.exits import BELOW_ONE, _check_positive, _check_unit, _Config
from edge.parts import Knob, Transform, attach, parts, register

SKIP_TARGETS = ("attention", "block")


@dataclass(frozen=True)
class SkipConfig(_Config):
    """MindSkip routers on `layers` (None: every layer) that skip the `target` ("attention" or
    "block") per sequence. Router-tuning trains only the routers, on at most `samples` sequences for
    `epochs` passes, with loss = distillation of the original output + `capacity_weight` *
    (average kept fraction - (1 - `skip_rate`))^2."""

    layers: tuple[int, ...] | None = None
    target: str = "attention"
    skip_rate: float = 0.5
    threshold: float = 0.5
    capacity_weight: float = 1.0
    samples: int = 1000
    epochs: int = 1
    lr: float = 1e-2

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers or not all(isinstance(a, int) and not isinstance(a, bool) for a in self.layers):
                raise EdgeError(f"SkipConfig.layers must be a non-empty list of layer numbers or None, got {self.layers!r}")
        if self.target not in SKIP_TARGETS:
            raise EdgeError(f"SkipConfig.target must be one of {', '.join(SKIP_TARGETS)}, got {self.target!r}")
        _check_unit("SkipConfig.skip_rate", self.skip_rate)
        _check_unit("SkipConfig.threshold", self.threshold)
        if not (isinstance(self.capacity_weight, (int, float)) and self.capacity_weight >= 0):
            raise EdgeError(f"SkipConfig.capacity_weight must be >= 0, got {self.capacity_weight!r}")
        _check_positive("SkipConfig.samples", self.samples, int)
        _check_positive("SkipConfig.epochs", self.epochs, int)
        _check_positive("SkipConfig.lr", self.lr)


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
