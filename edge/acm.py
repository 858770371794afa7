"""Adaptive Computation Module (Wojcik et al., arXiv 2312.10193): N ordered learners whose outputs
add up, plus a per-token gate that chooses how many of them (k in 0..N) run for each token."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.adaptive import AdaptiveFFN, gather_units, replace_ffns
from edge.arch import arch_for
from edge.config import Config, boolean, config, integer, one_of, real, setting
from edge.errors import EdgeError
from edge.parts import Knob, Transform, attach, register
from edge.registry import Registry

ACTIVATIONS: Registry[type] = Registry("activation")
ACTIVATIONS.register("gelu")(lambda: nn.GELU())
ACTIVATIONS.register("gelu_tanh")(lambda: nn.GELU(approximate="tanh"))
ACTIVATIONS.register("relu")(lambda: nn.ReLU())
ACTIVATIONS.register("silu")(lambda: nn.SiLU())

INITS = ("slices", "random")
# How the gate's N+1 outputs are read (and how phase 2 trains them):
#   "error": predicted log of each prefix's normalized error; the choice minimizes
#            error_k + gate_bias * k (a price per learner), so gate_bias is a Lagrange multiplier;
#   "ratio": class logits for the paper's labels (smallest k with err_k / err_{k+1} < 1.2).
GATE_SCORES = {"error": lambda raw: -raw.clamp(max=30).exp(), "ratio": lambda raw: raw}


@config("acm")
@dataclass(frozen=True)
class AcmConfig(Config):
    """What an ACMized model looks like and what compute it should spend.

    budget: target average compute of each ACM, as a fraction of the original FFN FLOPs
      (executed learners + gate), in (0, 1].
    learners: N, the number of ordered learners per module; the original FFN hidden units are split
      evenly among them, so running all N costs what the original FFN did.
    gate_hidden: hidden width of the per-token gate MLP.
    init: "slices" (learners start as disjoint, importance-ordered slices of the original FFN, so all
      N together reproduce it exactly) or "random".
    gate: "error" or "ratio", see GATE_SCORES.
    exact_top: the top of the knob (k = N) runs the original FFN itself, kept frozen, so budget 1.0 is
      the original model exactly; k < N runs the first k of N - 1 trained learners (the original's
      least important slice has no learner of its own). The price: the original FFN's weights are kept
      besides the learners' ((2N - 1) / N of the FFN's parameters, 1.75x for N = 4); the compute at
      every k is what it was. False: k = N runs all N learners, whose sum drifts from the original as
      they train (cos 0.994 at 1.0 on MiniLM, bench/results/knob.txt).
    """

    budget: float = setting(real(0, 1, low_open=True), 0.5)
    learners: int = setting(integer(1), 4)
    gate_hidden: int = setting(integer(1), 64)
    init: str = setting(one_of(*INITS), "slices")
    gate: str = setting(one_of(*GATE_SCORES), "error")
    exact_top: bool = setting(boolean(), True)


class ACM(AdaptiveFFN):
    """Drop-in replacement of an FFN  x -> W2 act(W1 x + b1) + b2  on (..., d) inputs.

    Learner j (0-based) is  x -> w2[j]^T act(w1[j] x + b1[j]) + b2[j]  with hidden width h = F / N.
    The gate maps x to N+1 scores; token choice k = argmax(scores - gate_bias * [0..N]). gate_bias is
    the budget knob: larger values push tokens to fewer learners.

    The N pieces: piece j < N - 1 is learner j, piece N - 1 is learner N - 1, or with exact_top the
    original FFN (`top`, frozen). Piece j runs on the tokens with k > j, except that with exact_top a
    token with k = N runs the top piece alone (`ran`). So k < N sums the first k learners, k = N is the
    last learner's prefix or the original FFN. `m` learners are stacked (N - 1 with exact_top).

    Two forward forms that agree: `dense` (training: every learner runs on every token and a mask
    drops the ones not chosen; gradients flow to the gate through a straight-through estimator) and
    the skipping form (inference: learner j runs only on the tokens that chose more than j learners).
    """

    def __init__(self, d: int, ffn_hidden: int, config: AcmConfig, act: str):
        super().__init__()
        n = config.learners
        if ffn_hidden % n:
            raise EdgeError(f"FFN hidden size {ffn_hidden} is not divisible by learners={n}; pick a divisor")
        self.d, self.n, self.h, self.act_name = d, n, ffn_hidden // n, act
        self.exact_top = config.exact_top
        self.m = n - 1 if self.exact_top else n  # the stacked learners
        self.act = ACTIVATIONS.get(act)()
        h, m = self.h, self.m
        self.w1 = nn.Parameter(torch.empty(m, h, d))  # up-projection of each learner
        self.b1 = nn.Parameter(torch.zeros(m, h))
        self.w2 = nn.Parameter(torch.empty(m, h, d))  # down-projection, stored (in, out) per learner
        self.b2 = nn.Parameter(torch.zeros(m, d))
        # the original FFN, the top of the knob (exact_top; zeros until load_ffn_, which install_acms calls);
        # frozen: it is the original model at budget 1.0
        self.top = None
        if self.exact_top:
            up, down = (nn.utils.skip_init(nn.Linear, i, o) for i, o in ((d, ffn_hidden), (ffn_hidden, d)))
            self.top = Learner(up, down, self.act).requires_grad_(False)
            for p in self.top.parameters():
                p.data.zero_()
        self.gate = nn.Sequential(nn.Linear(d, config.gate_hidden), nn.GELU(), nn.Linear(config.gate_hidden, n + 1))
        self.gate_kind = config.gate
        self.register_buffer("gate_bias", torch.zeros(()))
        self.dense = False  # set by edge.convert during training (the dense masked form)
        self.forced_k: int | None = None  # run every token with exactly k learners (static baseline)
        self.last_k: torch.Tensor | None = None  # (...,) choices of the last forward, for accounting
        self.last_gate: torch.Tensor | None = None  # (..., N+1) soft/ST one-hot of the last dense forward
        # the learners as modules, once a transform replaced the stacked weights (edge.quant: each learner's
        # two Linears quantized); None: learner j is w1[j], b1[j], w2[j], b2[j]
        self.learners: nn.ModuleList | None = None
        nn.init.normal_(self.w1, std=1 / math.sqrt(d))
        nn.init.normal_(self.w2, std=1 / math.sqrt(ffn_hidden))

    knob_name = "gate_bias"  # (export: one bias per ACM, edge.acm.GATE_KNOB)

    # --- AdaptiveFFN -----------------------------------------------------------------------------
    def gate_flops(self) -> int:
        g = self.gate[0].out_features
        return 2 * self.d * g + 2 * g * (self.n + 1)

    @property
    def static(self) -> bool:
        return self.forced_k is not None

    def count_at(self, scores: torch.Tensor, bias: float) -> torch.Tensor:
        return self.biased(scores, bias).argmax(-1)

    def trained(self):
        return [self.w1, self.b1, self.w2, self.b2], list(self.gate.parameters())

    def exact_at_top(self) -> bool:
        return self.exact_top

    def expected_units(self) -> torch.Tensor:
        return (self.last_gate.float() * torch.arange(self.n + 1, dtype=torch.float32)).sum(-1)

    # --- gate -----------------------------------------------------------------------------------
    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        return GATE_SCORES[self.gate_kind](self.gate(x))  # (..., N+1)

    def biased(self, logits: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Gate logits minus bias * k; bias defaults to the calibrated gate_bias (export feeds its own)."""
        ks = torch.arange(self.n + 1, device=logits.device, dtype=logits.dtype)
        return logits - (self.gate_bias if bias is None else bias) * ks  # (..., N+1)

    def count(self, logits: torch.Tensor) -> torch.Tensor:
        if self.forced_k is not None:
            return torch.full(logits.shape[:-1], self.forced_k, dtype=torch.long, device=logits.device)
        return self.biased(logits).argmax(-1)  # (...,)

    # --- learners -------------------------------------------------------------------------------
    def learner_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every stacked learner on every token: (..., d) -> (..., m, d)."""
        if not self.m:
            return x.new_zeros(*x.shape[:-1], 0, self.d)
        if self.learners is not None:
            return torch.stack([self.run_learner(x, j) for j in range(self.m)], -2)
        a = self.act(torch.einsum("...d,nhd->...nh", x, self.w1) + self.b1)  # (..., m, h)
        return torch.einsum("...nh,nhd->...nd", a, self.w2) + self.b2

    def prefix_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The output at k = 1..N on every token: (..., d) -> (..., N, d) (k = 0 is zero)."""
        prefix = self.learner_outputs(x).cumsum(-2)
        if self.exact_top:
            prefix = torch.cat([prefix, self.run_learner(x, self.m).unsqueeze(-2)], -2)
        return prefix

    def ran(self, k: torch.Tensor, j: int) -> torch.Tensor:
        """Whether piece j runs on the tokens that chose k (any shape, bool)."""
        if self.exact_top and j < self.n - 1:
            return (k > j) & (k < self.n)
        return k > j

    def run_learner(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """Piece j alone: (M, d) -> (M, d)."""
        if self.learners is not None:
            return self.learners[j](x)
        if j == self.m:  # exact_top's last piece
            return self.top(x)
        return self.act(F.linear(x, self.w1[j], self.b1[j])) @ self.w2[j] + self.b2[j]

    def learner(self, j: int) -> nn.Module:
        """Piece j as a module of its own, (M, d) -> (M, d): the module a transform installed, or two
        Linears with copies of its weights (what the routed export runs: weights sliced out of the stacked
        tensors at run time would keep them from the backend's GEMMs)."""
        if self.learners is not None:
            return self.learners[j]
        if j == self.m:
            return copy.deepcopy(self.top)
        up, down = nn.Linear(self.d, self.h), nn.Linear(self.h, self.d)
        with torch.no_grad():
            up.weight.copy_(self.w1[j])
            up.bias.copy_(self.b1[j])
            down.weight.copy_(self.w2[j].t())
            down.bias.copy_(self.b2[j])
        return Learner(up, down, self.act)

    def set_learners(self, learners: list[nn.Module]) -> None:
        """Replace the stacked learner weights (and the top) by one module per piece (each (M, d) -> (M, d));
        the stacked ones are dropped (a quantized model carries no fp32 copy of them)."""
        if len(learners) != self.n:
            raise ValueError(f"an ACM of {self.n} learners takes {self.n} learner modules, got {len(learners)}")
        self.learners = nn.ModuleList(learners)
        for name in ("w1", "b1", "w2", "b2"):
            self.register_parameter(name, None)
        self.top = None

    def gate_module(self) -> nn.Module:
        return self.gate

    def unit(self, j: int) -> nn.Module:
        return self.learner(j)

    def set_units(self, units: list[nn.Module]) -> None:
        self.set_learners(units)

    def units_replaced(self) -> bool:
        return self.learners is not None

    def unit_widths(self) -> tuple[int, ...]:
        return (self.d, self.h) + ((self.n * self.h,) if self.exact_top else ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forced_k is not None and not self.dense:  # static: the gate is not needed
            self.last_k = torch.full(x.shape[:-1], self.forced_k, dtype=torch.long, device=x.device)
            return self._forward_skipping(x, self.last_k)
        logits = self.gate_logits(x)
        if self.dense:
            return self._forward_dense(x, logits)
        k = self.count(logits)
        self.last_k = k
        return self._forward_skipping(x, k)

    def _forward_dense(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        hard = F.one_hot(self.count(logits), self.n + 1).to(x.dtype)
        soft = self.biased(logits).softmax(-1)
        g = hard + soft - soft.detach()  # straight-through: forward is hard, gradient is soft's
        self.last_gate, self.last_k = g, hard.argmax(-1)
        return (self.prefix_outputs(x) * g[..., 1:].unsqueeze(-1)).sum(-2)  # sum_k g_k * output at k

    def _forward_skipping(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Learner j runs on the tokens with k > j only. The tokens are sorted by k (most first) once,
        so learner j's tokens are the first m_j rows, and each learner's weights are read once. (The
        other form, one FFN of width k*h per group of equal k, reads 2.5x the FFN's weights for N = 4
        and ran the converted MiniLM at 0.5 in 1.26x the original's time, batch 1, against 1.07x:
        bench/acm_eager.py.) The same loop as the routed export's driver (device.driver.run_learners):
        piece j's tokens are rows spans(counts)[j] of the sorted ones."""
        shape = x.shape
        x, k = x.reshape(-1, self.d), k.reshape(-1)  # (M, d), (M,)
        y = x.new_zeros(x.shape)  # zero for the tokens that run no learner
        counts = torch.bincount(k, minlength=self.n + 1).flip(0).cumsum(0).flip(0)[1:].tolist()  # m_j: tokens with k > j
        if m := counts[0]:
            rows = torch.argsort(k, descending=True, stable=True)[:m]
            xs = x[rows]  # (m, d), most learners first
            ys = torch.zeros_like(xs)
            for j, (start, stop) in enumerate(spans(counts, self.exact_top)):
                if stop > start:
                    ys[start:stop] += self.run_learner(xs[start:stop], j)
            y[rows] = ys
        return y.reshape(shape)

    def gathered(self, x: torch.Tensor, gate_bias: torch.Tensor, spare: bool = False,
                 k: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The skipping forward as one exportable graph, pure (no state written, so it can sit in a
        torch.cond branch): learner j gathers the tokens with k > j (NonZero -> index_select), runs
        on them only and adds its output back; no data-dependent Python. gate_bias is a tensor (a
        graph input: the budget level). Returns (y like x, k (M,) learners run per token).
        spare=False: the outputs are added back with index_add (ONNX ScatterND).
        spare=True, for a backend that takes no empty tensor (XNNPACK): every learner also runs on
        one spare row of zeros, so it never runs on 0 rows, and each token reads its row of the
        output back (index_select, 0 for the spare) times whether it ran (ExecuTorch's portable
        index_add took 0.7 ms a call on MiniLM's 128 tokens). The same numbers either way.
        k: the learners per token to run instead of the gate's choice (eager only: export.verify
        recomputes a near-tie along the branch an artifact took)."""
        shape = x.shape
        x = x.reshape(-1, self.d)  # (M, d)
        if k is None:
            k = self.route(x, gate_bias)
        y = gather_units(x, torch.zeros_like(x), lambda j: self.ran(k, j), self.run_learner, self.n, spare)
        return y.reshape(shape), k

    def route(self, x: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        """(AdaptiveFFN.route) the learners each token runs (M,), at gate bias `knob`."""
        return self.biased(self.gate_logits(x), knob).argmax(-1)

    decision = "acm"  # (device.driver.run_learners: learner j runs on the tokens with k > j)

    def routed_method(self, layer: int) -> str:
        return f"learners{layer}"

    def routed_then(self, layer: int) -> dict:
        return {"learners": self.routed_method(layer), "n": self.n, "top": self.exact_top}

    def decide(self, x: torch.Tensor, knob: torch.Tensor, follow=None) -> tuple[torch.Tensor, float, bool]:
        """(AdaptiveFFN.decide) a k's margin: where tokens follow another k, the largest lead of a
        token's own k's biased score over the followed k's; else the smallest lead of a token's own k
        over its runner-up (0: an exact tie)."""
        scores = self.biased(self.gate_logits(x.reshape(-1, self.d)), knob)  # (M, N+1)
        own = scores.argmax(-1)
        take = own if follow is None else torch.as_tensor(follow, dtype=torch.long).reshape(-1)
        if take.shape != own.shape or bool((take < 0).any()):
            take = own  # (a path that never reached this layer in the artifact: a branch mismatch elsewhere)
        followed = take != own  # (M,)
        if bool(followed.any()):  # the worst token followed against its own choice
            gap = scores.gather(-1, own[:, None])[:, 0] - scores.gather(-1, take[:, None])[:, 0]
            return take, float(gap[followed].max()), True
        top2 = scores.topk(min(2, scores.shape[-1]), -1).values  # the token nearest to choosing another k
        gap = top2[:, 0] - top2[:, -1] if top2.shape[-1] > 1 else torch.full_like(top2[:, 0], float("inf"))
        return take, float(gap.min()), False

    def load_ffn_(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  importance: torch.Tensor | None = None, slices: bool = True) -> None:
        """Initialize the learners as disjoint slices of an FFN (w1: (F, d), w2: (d, F)), most
        important hidden units first, so that all N learners together reproduce it exactly (with
        exact_top: the top is the FFN, and the learners are its first N - 1 slices). slices=False: the
        top only (the learners keep their own initialization)."""
        order = torch.argsort(importance, descending=True) if importance is not None else torch.arange(w1.shape[0])
        m, h, d = self.m, self.h, self.d
        with torch.no_grad():
            if slices:
                self.w1.copy_(w1[order].view(self.n, h, d)[:m])
                self.b1.copy_(b1[order].view(self.n, h)[:m])
                self.w2.copy_(w2.t()[order].view(self.n, h, d)[:m])
                self.b2.zero_()
                if m:
                    self.b2[0].copy_(b2)
            if self.top is not None:
                for lin, w, b in ((self.top.up, w1, b1), (self.top.down, w2, b2)):
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)


class Learner(nn.Module):
    """One learner as a module: x -> down(act(up(x)))."""

    def __init__(self, up: nn.Module, down: nn.Module, act: nn.Module):
        super().__init__()
        self.up, self.down, self.act = up, down, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


def spans(counts: list[int], exact_top: bool) -> list[tuple[int, int]]:
    """Each piece's rows [start, stop) among the tokens sorted by k (most first), from counts[j] = the
    tokens with k > j: piece j takes the first counts[j]; with exact_top the tokens with k = N (the
    first counts[-1]) run the top piece alone, so learner j < N - 1 starts after them. (device.driver
    has its copy: the device side imports no torch.)"""
    top = counts[-1] if exact_top else 0
    return [(top if j < len(counts) - 1 else 0, c) for j, c in enumerate(counts)]


def acm_of(layer: nn.Module) -> ACM | None:
    """The ACM installed in a layer, if any."""
    return next((m for m in layer.modules() if isinstance(m, ACM)), None)


def acm_modules(model: nn.Module) -> list[ACM]:
    return [m for m in model.modules() if isinstance(m, ACM)]


def install_acms(model: nn.Module, config: AcmConfig) -> list[ACM]:
    """Replace every FFN of `model` (in place) by an ACM of the same width: its learners uninitialized,
    its top of the knob (exact_top) the FFN it replaces."""
    def make(ffn):
        acm = ACM(ffn.fc1.in_features, ffn.fc1.out_features, config, ffn.act)
        acm.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, slices=False)
        return acm

    acms = replace_ffns(model, make, "an ACM")
    attach(model).add("acm", config)
    return acms


FORCE = 1e4  # a gate bias this large forces k = 0 (positive) or k = N (negative) on every token
BIAS_STEPS = (-FORCE, -1.0, -0.3, 0.0, 0.3, 1.0, FORCE)  # added to the model's own gate bias by the forcing cases


def _gate_bias(model: nn.Module) -> torch.Tensor:
    return torch.stack([m.gate_bias.float() for m in acm_modules(model)])


def _acm_plan(model: nn.Module) -> list[dict]:
    found = [(i, acm) for i, layer in enumerate(arch_for(model).layers(model), 1) if (acm := acm_of(layer)) is not None]
    return [{"layer": i, "learners": acm.n, "knob": "gate_bias", "index": j} for j, (i, acm) in enumerate(found)]


GATE_KNOB = Knob(
    "gate_bias", "acms", own=_gate_bias, full=_gate_bias,
    cases=lambda m, full: [(f"gate bias {b:+g}", full + b) for b in BIAS_STEPS],  # none .. every token runs all
    plan=_acm_plan)

register(Transform("acm", AcmConfig, install_acms, knob=GATE_KNOB, export_order=2))
