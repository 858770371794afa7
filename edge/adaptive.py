"""What every adaptive FFN has in common (an ACM, a sigma-MoE): a per-token choice of how many of its
equal units run (an ACM's learners, a MoE's experts), made by a gate whose scores are read against one
bias, the budget knob. The budget machinery (calibration, the FLOP meter, the traced FLOPs) and
phase 3 of a conversion (edge.convert.train_end_to_end) work on this interface, so a new adaptive FFN
is one subclass.

FLOPs (torch.utils.flop_counter's convention: an (M, K) x (K, N) product costs 2MKN), per token:
ffn_flops() the FFN it replaced, gate_flops() its gate (not run when `static`), unit_flops() one unit.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from edge.arch import arch_for
from edge.errors import EdgeError

TOP_BIAS = -2.0 ** 50  # the gate bias at budget 1.0 (~ -1.1e15, exact in fp32): below any gap between two scores


class AdaptiveFFN(nn.Module):
    """d: model width; n: units; h: hidden width of one unit. last_k: units run per token in the
    last forward; last_gate: what the dense (training) forward leaves for `expected_units`."""

    d: int
    n: int
    h: int
    dense: bool
    last_k: torch.Tensor | None

    # --- accounting -----------------------------------------------------------------------------
    def ffn_flops(self) -> int:
        return 4 * self.d * self.n * self.h

    def unit_flops(self) -> int:
        return 4 * self.d * self.h

    def gate_flops(self) -> int:
        raise NotImplementedError

    @property
    def static(self) -> bool:
        """Every token runs a fixed choice (the static baseline): the gate does not run."""
        return False

    def flops(self, k: torch.Tensor) -> torch.Tensor:
        """FLOPs per token for k units run (any shape)."""
        return self.gate_flops() * (not self.static) + self.unit_flops() * k

    def fraction(self, k_mean: float | torch.Tensor) -> float | torch.Tensor:
        """Average compute as a fraction of the FFN's, for an average of k_mean units per token (the
        gate's included unless the choice is static)."""
        return self.flops(k_mean) / self.ffn_flops()

    # --- the knob -------------------------------------------------------------------------------
    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's scores (..., S) on inputs (..., d), what `count_at` reads."""
        raise NotImplementedError

    def count_at(self, scores: torch.Tensor, bias: float) -> torch.Tensor:
        """Units each token runs (...,) at gate bias `bias`: never more for a larger bias."""
        raise NotImplementedError

    def calibrate_(self, scores: torch.Tensor, budget: float, iters: int) -> float:
        """Set the gate bias so that the average compute on `scores` (M, S) is at most `budget` of
        the FFN, as close as `iters` steps of bisection get; at 1.0 every unit runs (TOP_BIAS).
        Returns the bias."""
        if budget >= 1.0:
            bias = TOP_BIAS
        else:
            bias = bisect_bias(lambda b: float(self.fraction(self.count_at(scores, b).float().mean())), budget, iters)
        self.set_knob_(bias)
        return bias

    def set_knob_(self, value: float) -> None:
        """Set the knob to a value `calibrate_` returned."""
        self.gate_bias.fill_(value)

    def knob_value(self) -> float:
        return float(self.gate_bias)

    # --- phase 3 (edge.convert.train_end_to_end) --------------------------------------------------
    def trained(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(unit parameters, gate parameters) that the end-to-end phase trains."""
        raise NotImplementedError

    def exact_at_top(self) -> bool:
        """Whether budget 1.0 runs the original FFN itself, frozen (nothing to train there)."""
        return False

    # whether its conversion trains the units before the end-to-end phase (an ACM's learners); False: they
    # start trained (a MoE's experts are the FFN's own neurons), and the end-to-end phase gets that time
    phase1: bool = True

    def expected_units(self) -> torch.Tensor:
        """(...,) differentiable units run per token in the last dense forward."""
        raise NotImplementedError

    def aux_loss(self) -> torch.Tensor | float:
        """A regularizer of the last dense forward, added to phase 3's loss (0: none)."""
        return 0.0

    def end_training(self) -> None:
        self.dense, self.last_gate = False, None

    # --- units as modules (edge.quant) ------------------------------------------------------------
    def gate_module(self) -> nn.Module:
        """The module that scores the units (an ACM's gate, a MoE's router): a decision, not a unit."""
        raise NotImplementedError

    def unit(self, j: int) -> nn.Module:
        """Unit j as a module of its own (up, down, act): the module installed, or copies of its weights."""
        raise NotImplementedError

    def set_units(self, units: list[nn.Module]) -> None:
        """Replace the stacked unit weights by one module per unit (a quantized model's)."""
        raise NotImplementedError

    def units_replaced(self) -> bool:
        raise NotImplementedError

    def unit_widths(self) -> tuple[int, ...]:
        """The input widths of the units' Linears (what an int4 group size must divide)."""
        return (self.d, self.h)

    # --- export (export.graph.GraphModel) ---------------------------------------------------------
    # knob_name: the exported program's knob input that steers this kind (one row per layer of it);
    # a route per token (the graph's `ks` output): what the token ran, an int (an ACM: its learners;
    # a MoE: its experts as a bit mask), so that verify compares and forces branches as integers
    knob_name: str = ""

    def gathered(self, x: torch.Tensor, knob: torch.Tensor, spare: bool = False,
                 route: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The skipping forward as one exportable, pure graph on (..., d) inputs: each unit gathers its
        tokens (NonZero -> index_select), runs on them and adds its output back. knob: this layer's
        row of the knob input. spare: each unit also runs on one spare row (a backend that takes no
        empty tensor). route: the routes (M,) to take instead of the gate's (eager only: verify).
        Returns (y like x, route (M,))."""
        raise NotImplementedError

    def route(self, x: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        """The routes (M,) of tokens x (M, d) under this layer's knob row: what `gathered` runs, and what
        the routed mode's gate piece returns for the driver."""
        raise NotImplementedError

    # routed mode (export.routed): the gate piece returns x and the routes k; the plan's decision (kind
    # `decision`, this layer's index under that key) names one method running every unit on its own
    # gathered tokens, which the driver (device.driver) gathers by the kind's rule; the finish piece
    # takes the sum of the units' outputs
    decision: str = ""

    def routed_method(self, layer: int) -> str:
        """The name of the method running the units of this FFN (at `layer`, 1-based)."""
        raise NotImplementedError

    def routed_then(self, layer: int) -> dict:
        """The decision's fields besides kind, layer, index and next (the method, the units, ...)."""
        raise NotImplementedError

    def routed_unit(self, j: int) -> nn.Module:
        """Unit j as the routed mode runs it, (m_j, d) -> (m_j, d) its output on its tokens."""
        return self.unit(j)

    def routed_output(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output, from y: the sum of each token's units' outputs (0 where none ran)."""
        return y

    def decide(self, x: torch.Tensor, knob: torch.Tensor, follow=None) -> tuple[torch.Tensor, float, bool]:
        """verify's view of this layer's routing on inputs x (M, d): (the routes (M,) to take: the gate's
        own, or `follow` (an artifact's) when given and of the right shape; the margin: where the
        followed routes differ from the own ones, how far the furthest such decision was from its
        threshold, else how near the nearest decision came to one; whether any was followed)."""
        raise NotImplementedError


def gather_units(x: torch.Tensor, y: torch.Tensor, ran, run, n: int, spare: bool) -> torch.Tensor:
    """y (M, d) plus each unit j < n run on the tokens ran(j) (M,) bool picks (NonZero -> index_select ->
    run(rows, j) -> index_add): the gathered forms of an ACM and a MoE, one exportable graph.
    spare: every unit also runs on one spare row of zeros, so it never runs on 0 rows (a backend that
    takes no empty tensor), and each token reads its row of the output back (index_select, 0 for the
    spare) times whether it ran. The same numbers either way."""
    if spare:
        x = torch.cat([torch.zeros_like(x[:1]), x])  # (1 + M, d): row 0 the spare, token i in row i + 1
    for j in range(n):
        mask = ran(j)  # (M,)
        idx = torch.nonzero(mask).reshape(-1)  # (m_j,)  reshape, not squeeze: ExecuTorch dim order
        if spare:
            spare_row = mask[:1].long() * 0  # (1,) 0, made from a tensor (a constant breaks a cond branch)
            out = run(x.index_select(0, torch.cat([spare_row, idx + 1])), j)  # (1 + m_j, d)
            row = mask.long().cumsum(0) * mask  # (M,) each token's row of out; 0 (the spare) where it did not run
            y = y + out.index_select(0, row) * mask[:, None].to(x.dtype)
        else:
            y = y.index_add(0, idx, run(x.index_select(0, idx), j))  # (m_j, d) added back
    return y


def bisect_bias(fraction: Callable[[float], float], budget: float, iters: int) -> float:
    """The smallest bias (as close as `iters` bisection steps get) with fraction(bias) <= budget,
    for a fraction that never grows with the bias. bias = sinh(t), t in [-4.1, 4.1]: fine steps near
    0 (error-like scores), reaching +-30 (logits)."""
    lo, hi = -4.1, 4.1
    if fraction(math.sinh(lo)) <= budget:
        hi = lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fraction(math.sinh(mid)) > budget else (lo, mid)
    return math.sinh(hi)


def adaptive_ffns(model: nn.Module) -> list[AdaptiveFFN]:
    """The adaptive FFNs of a model (or a layer), in order."""
    return [m for m in model.modules() if isinstance(m, AdaptiveFFN)]


def refuse_adaptive(model: nn.Module, what: str) -> None:
    """One clear line when `what` (a transform that replaces the FFNs) meets FFNs replaced already."""
    if found := adaptive_ffns(model):
        raise EdgeError(f"this model's FFNs are adaptive already ({type(found[0]).__name__}); "
                        f"{what} takes the original (or pruned) model's FFNs")


def replace_ffns(model: nn.Module, make: Callable[[nn.Module], AdaptiveFFN], what: str) -> list[AdaptiveFFN]:
    """Replace every FFN of `model` (in place) by make(ffn) (an adaptive FFN of the same shape, the
    FFN's weights loaded); `what` names it in the error when the FFNs were replaced already."""
    refuse_adaptive(model, what)
    arch = arch_for(model)
    made = []
    for layer in arch.layers(model):
        made.append(make(arch.ffn(layer, model.config)))
        arch.install(layer, made[-1])
    return made


def adaptive_of(layer: nn.Module) -> AdaptiveFFN | None:
    """The adaptive FFN installed in a layer, if any."""
    return next((m for m in layer.modules() if isinstance(m, AdaptiveFFN)), None)
