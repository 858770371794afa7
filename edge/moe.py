"""sigma-MoE FFNs (Csordas, Irie, Schmidhuber, arXiv 2310.10837) made from a pretrained FFN
(MoEfication, Zhang et al., arXiv 2110.01786): the FFN's F hidden neurons grouped into E experts of
G = F / E neurons each, and a router that scores every expert for every token with an independent
sigmoid gate. A token runs the experts its gates open and nothing else; every expert open is the FFN
exactly (the experts are its own neurons, regrouped). edge.moefy makes and trains one.

Two modes (MoeConfig.mode):
  "topk"     the paper's: every token runs its K best-scored experts (K from the budget);
  "adaptive" one step past both papers: a token runs the experts whose gate is open,
             sigmoid(score - gate_bias) > 1/2, so an easy token opens few and a hard one many; gate_bias
             is the budget knob, calibrated on calibration data to an average FFN FLOP fraction exactly
             as an ACM's (edge.budget.calibrate_budget_).
The router's scores are trained to predict the log of each expert's share of the token's FFN output
(edge.moe_convert, phase 1), so gate_bias is a price per expert: a token runs an expert when its predicted
contribution is above the price. The expert outputs are NOT scaled by the gate values (unlike the
paper's layer, trained from scratch): that keeps every-expert-open the original FFN; the gates get
their gradient through a straight-through estimator in training, as an ACM's do.

Two forward forms that agree (tested): `dense` (training: every expert on every token, the closed
ones masked; expert dropout and the entropy regularizer of the paper) and the skipping form
(inference: each expert gathers its tokens and runs on them only, one read of its weights per call).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.acm import ACTIVATIONS, FORCE, Learner  # (FORCE: a price this large closes an expert, or opens it)
from edge.adaptive import AdaptiveFFN, adaptive_of, gather_units, replace_ffns
from edge.arch import arch_for
from edge.config import Config, config, integer, one_of, real, setting
from edge.errors import EdgeError
from edge.parts import Knob, Transform, attach, register

MODES = ("adaptive", "topk")


@config("moe")
@dataclass(frozen=True)
class MoeConfig(Config):
    """What a sigma-MoE model looks like and what compute it spends.

    budget: target average compute of each MoE layer (the experts run plus the router), as a fraction
      of the original FFN's FLOPs, in (0, 1].
    experts: E, experts per layer; the FFN's hidden width must divide by it.
    mode: "adaptive" (a per-token count: the gates open above the calibrated bias) or "topk" (every
      token runs the same number K of its best-scored experts).
    router_hidden: hidden width of the router MLP (d -> g -> E); 0: one linear layer d -> E (the
      paper's).
    expert_dropout: in training, each open expert of each token is closed with this probability
      (the paper's expert dropout), so that no expert is relied on alone.
    balance: weight of the paper's entropy regularizer on the batch's mean gate values (keeps every
      expert used).
    """

    budget: float = setting(real(0, 1, low_open=True), 0.5)
    experts: int = setting(integer(1), 16)
    mode: str = setting(one_of(*MODES), "adaptive")
    router_hidden: int = setting(integer(0), 64)
    expert_dropout: float = setting(real(0, 1, high_open=True), 0.1)
    balance: float = setting(real(0), 0.01)


class MoE(AdaptiveFFN):
    """Drop-in replacement of an FFN  x -> W2 act(W1 x + b1) + b2  on (..., d) inputs.

    Expert e is  x -> w2[e]^T act(w1[e] x + b1[e]) + c[e]  (G hidden neurons), and every token gets
    b2 whatever it runs (neither costs a multiply). moefy sets c[e] to minus the expert's mean output
    and adds the means to b2: a closed expert then contributes its mean instead of nothing (the
    experts of a GELU FFN are far from zero-mean), and every expert open is still the FFN exactly. The
    router maps x to E scores."""

    def __init__(self, d: int, ffn_hidden: int, config: MoeConfig, act: str):
        super().__init__()
        e = config.experts
        if ffn_hidden % e:
            raise EdgeError(f"FFN hidden size {ffn_hidden} is not divisible by experts={e}; pick a divisor")
        self.d, self.n, self.h, self.act_name, self.mode = d, e, ffn_hidden // e, act, config.mode
        self.act = ACTIVATIONS.get(act)()
        self.w1 = nn.Parameter(torch.empty(e, self.h, d))  # up-projection of each expert
        self.b1 = nn.Parameter(torch.zeros(e, self.h))
        self.w2 = nn.Parameter(torch.empty(e, self.h, d))  # down-projection, stored (in, out) per expert
        self.c = nn.Parameter(torch.zeros(e, d))  # each expert's output bias (minus its mean output)
        self.b2 = nn.Parameter(torch.zeros(d))  # every token's: the FFN's output bias plus the experts' means
        g = config.router_hidden
        self.router = (nn.Sequential(nn.Linear(d, g), nn.GELU(), nn.Linear(g, e)) if g else nn.Linear(d, e))
        self.register_buffer("gate_bias", torch.zeros(()))  # adaptive: the price per expert
        self.register_buffer("top_k", torch.tensor(e))  # topk: experts per token
        # constants of the exported graph (a tensor made inside a cond branch breaks export)
        self.register_buffer("bits", 2 ** torch.arange(e), persistent=False)  # a route's bit of each expert
        self.expert_dropout, self.balance = config.expert_dropout, config.balance
        self.dense = False
        self.forced: torch.Tensor | None = None  # (E,) bool: every token runs these experts (static baseline)
        self.last_k: torch.Tensor | None = None  # (...,) experts run per token in the last forward
        self.last_gate: torch.Tensor | None = None  # (..., E) straight-through gates of the last dense forward
        self.last_soft: torch.Tensor | None = None  # (..., E) their soft values (the regularizer's)
        # the experts as modules, once a transform replaced the stacked weights (edge.quant: each expert's two
        # Linears quantized; c stays); None: expert e is w1[e], b1[e], w2[e]
        self.experts: nn.ModuleList | None = None
        nn.init.normal_(self.w1, std=1 / math.sqrt(d))
        nn.init.normal_(self.w2, std=1 / math.sqrt(ffn_hidden))

    knob_name = "experts"  # (export: one row [K, price of each expert] per MoE, edge.moe.EXPERT_KNOB)
    phase1 = False  # (its experts are the FFN's neurons: moefy's end-to-end phase takes phase 1's time)

    # --- AdaptiveFFN ------------------------------------------------------------------------------
    def gate_flops(self) -> int:
        if isinstance(self.router, nn.Linear):
            return 2 * self.d * self.n
        g = self.router[0].out_features
        return 2 * self.d * g + 2 * g * self.n

    @property
    def static(self) -> bool:
        return self.forced is not None

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(x)

    def count_at(self, scores: torch.Tensor, bias: float) -> torch.Tensor:
        return (scores > bias).sum(-1)

    def calibrate_(self, scores: torch.Tensor, budget: float, iters: int) -> float:
        if self.mode == "adaptive":
            return super().calibrate_(scores, budget, iters)
        # topk: the most experts per token within the budget (all of them at the top of the knob)
        k = self.n if budget >= 1.0 else max((k for k in range(self.n + 1) if self.fraction(k) <= budget), default=0)
        self.top_k.fill_(k)
        return float(k)

    def set_knob_(self, value: float) -> None:
        if self.mode == "adaptive":
            self.gate_bias.fill_(value)
        else:
            self.top_k.fill_(int(value))

    def knob_value(self) -> float:
        return float(self.gate_bias if self.mode == "adaptive" else self.top_k)

    def trained(self):
        return [self.w1, self.b1, self.w2, self.c, self.b2], list(self.router.parameters())

    def expected_units(self) -> torch.Tensor:
        """Top-K runs K experts whatever its gates say: no budget gradient reaches its router (a pull towards
        another count only reshuffles the experts nearest the K-th score; it undid the end-to-end phase:
        0.877 -> 0.842 cos in 100 steps with it, -> 0.894 without, session 28)."""
        g = self.last_gate.float()
        return (g.detach() if self.mode == "topk" else g).sum(-1)

    def aux_loss(self) -> torch.Tensor | float:
        """The paper's entropy regularizer: minus the entropy of the batch's mean gate values
        (normalized), weighted `balance`; 0 at uniform use of the experts."""
        if not self.balance or self.last_soft is None:
            return 0.0
        p = self.last_soft.float().reshape(-1, self.n).mean(0)
        p = p / p.sum().clamp(min=1e-9)
        return self.balance * (math.log(self.n) + (p * p.clamp(min=1e-9).log()).sum())

    def end_training(self) -> None:
        super().end_training()
        self.last_soft = None

    # --- routing ----------------------------------------------------------------------------------
    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """(..., E) bool: the experts each token runs, from the router's scores (..., E)."""
        if self.forced is not None:
            return self.forced.expand(scores.shape)
        if self.mode == "adaptive":
            return scores > self.gate_bias
        return self.best(scores, self.top_k)

    def best(self, scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(..., E) bool: each token's k best experts (k a 0-dim tensor, read at run time): those with fewer
        than k experts scored above them. One compare of every pair and a count (the form before, which also
        broke ties by expert order, took 5 more ops on E x E per token: 2.6 ms more of a 43 ms MiniLM on
        ExecuTorch, 1 core; a sort of the scores saves 2 ms more there, but LiteRT's runtime has no sort);
        a tie at the k-th score, which a router's float scores do not make, opens every tied expert."""
        return (scores.unsqueeze(-2) > scores.unsqueeze(-1)).sum(-1) < k

    def choose(self, scores: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        """(..., E) bool: the experts each token runs under an exported knob row [K, price_1..E]: those
        whose score is above their price AND among the token's K best."""
        return (scores > knob[1:]) & self.best(scores, knob[0])

    def _soft(self, scores: torch.Tensor) -> torch.Tensor:
        """The gates' sigmoid values (..., E): around the bias (adaptive), or around the middle of the
        K-th and (K+1)-th scores of the token (topk)."""
        if self.mode == "adaptive" or self.forced is not None:
            return torch.sigmoid(scores - self.gate_bias.clamp(min=-30.0))
        k, v = int(self.top_k), scores.detach().sort(-1, descending=True).values
        edge = v[..., :1] + 1 if k <= 0 else v[..., -1:] - 1 if k >= self.n else (v[..., k - 1:k] + v[..., k:k + 1]) / 2
        return torch.sigmoid(scores - edge)

    def run_expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e alone: (M, d) -> (M, d)."""
        if self.experts is not None:
            return self.experts[e](x) + self.c[e]
        return self.act(F.linear(x, self.w1[e], self.b1[e])) @ self.w2[e] + self.c[e]

    def gate_module(self) -> nn.Module:
        return self.router

    def unit(self, e: int) -> nn.Module:
        """Expert e without its output bias c[e] (kept here): the module installed, or two Linears with
        copies of its weights."""
        if self.experts is not None:
            return self.experts[e]
        up, down = nn.Linear(self.d, self.h), nn.Linear(self.h, self.d, bias=False)
        with torch.no_grad():
            up.weight.copy_(self.w1[e])
            up.bias.copy_(self.b1[e])
            down.weight.copy_(self.w2[e].t())
        return Learner(up, down, self.act)

    def set_units(self, units: list[nn.Module]) -> None:
        if len(units) != self.n:
            raise ValueError(f"a MoE of {self.n} experts takes {self.n} expert modules, got {len(units)}")
        self.experts = nn.ModuleList(units)
        for name in ("w1", "b1", "w2"):
            self.register_parameter(name, None)

    def units_replaced(self) -> bool:
        return self.experts is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forced is not None and not self.dense:  # static: the router is not needed
            chosen = self.forced.expand(*x.shape[:-1], self.n)
        else:
            scores = self.gate_logits(x)
            if self.dense:
                return self._forward_dense(x, scores)
            chosen = self.select(scores)
        self.last_k = chosen.sum(-1)
        return self._forward_skipping(x, chosen)

    def _forward_dense(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        hard = self.select(scores).to(x.dtype)
        soft = self._soft(scores)
        if self.expert_dropout and torch.is_grad_enabled():  # (not in the calibrations inside training)
            hard = hard * (torch.rand_like(hard) >= self.expert_dropout)
        g = hard + soft - soft.detach()  # straight-through: forward is hard, gradient is soft's
        self.last_gate, self.last_soft, self.last_k = g, soft, hard.sum(-1).long()
        if self.experts is not None:  # (a quantized model's modules: each expert on every token)
            outs = torch.stack([m(x) for m in self.experts], -2)  # (..., E, d)
            return (outs * g.unsqueeze(-1)).sum(-2) + g @ self.c + self.b2
        a = self.act(torch.einsum("...d,egd->...eg", x, self.w1) + self.b1)  # (..., E, G)
        return torch.einsum("...eg,egd->...d", a * g.unsqueeze(-1), self.w2) + g @ self.c + self.b2

    def _forward_skipping(self, x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Expert e gathers the tokens that chose it, runs on them alone and adds its output back."""
        shape = x.shape
        x, chosen = x.reshape(-1, self.d), chosen.reshape(-1, self.n)
        y = self.b2.expand(x.shape).clone()
        for e in range(self.n):
            idx = torch.nonzero(chosen[:, e]).reshape(-1)
            if idx.numel():
                y.index_add_(0, idx, self.run_expert(x.index_select(0, idx), e))
        return y.reshape(shape)

    # --- export ----------------------------------------------------------------------------------
    def knob_row(self) -> torch.Tensor:
        """This layer's row of the exported knob, (1 + E,) [K, price of each expert] (MoE.choose): adaptive
        [E, gate_bias, ..]; topk [K, -FORCE, ..]; the static baseline [E, -FORCE where forced, +FORCE else]."""
        if self.forced is not None:
            return torch.cat([torch.tensor([float(self.n)]), torch.where(self.forced, -FORCE, FORCE)])
        if self.mode == "adaptive":
            return torch.cat([torch.tensor([float(self.n)]), self.gate_bias.float().expand(self.n)])
        return torch.cat([self.top_k.float().reshape(1), torch.full((self.n,), -FORCE)])

    def routes(self, chosen: torch.Tensor) -> torch.Tensor:
        """(...,) int64: each token's experts as a bit mask (bit e: expert e ran)."""
        return (chosen.long() * self.bits).sum(-1)

    def chosen_of(self, routes: torch.Tensor) -> torch.Tensor:
        """The inverse of `routes`: (M,) bit masks -> (M, E) bool."""
        return (routes.reshape(-1, 1) & self.bits) != 0

    def gathered(self, x: torch.Tensor, knob: torch.Tensor, spare: bool = False,
                 route: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(AdaptiveFFN.gathered) expert e gathers the tokens that chose it (NonZero -> index_select),
        runs on them and adds its output back (index_add; spare: each expert also runs on one spare
        row of zeros and each token reads its row back, as edge.acm.ACM.gathered). Routes: bit masks."""
        shape = x.shape
        x = x.reshape(-1, self.d)  # (M, d)
        chosen = self.choose(self.gate_logits(x), knob) if route is None else self.chosen_of(route)
        y = gather_units(x, torch.zeros_like(x) + self.b2, lambda e: chosen[:, e], self.run_expert, self.n, spare)
        return y.reshape(shape), self.routes(chosen)

    def route(self, x: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        """(AdaptiveFFN.route) each token's experts (M,) as a bit mask, under the knob row [K, prices]."""
        return self.routes(self.choose(self.gate_logits(x), knob))

    decision = "moe"  # (device.driver.run_experts: expert e runs on the tokens whose route has bit e)

    def routed_method(self, layer: int) -> str:
        return f"experts{layer}"

    def routed_then(self, layer: int) -> dict:
        return {"experts": self.routed_method(layer), "n": self.n}

    def routed_unit(self, e: int) -> nn.Module:
        """Expert e with its output bias c[e] (every token that runs it gets it)."""
        return Biased(self.unit(e), self.c[e].detach().clone())

    def routed_output(self, y: torch.Tensor) -> torch.Tensor:
        """b2: every token gets it, whichever experts it ran (none included)."""
        return y + self.b2

    def decide(self, x: torch.Tensor, knob: torch.Tensor, follow=None) -> tuple[torch.Tensor, float, bool]:
        """(AdaptiveFFN.decide) a decision is one expert of one token: its distance from its boundary,
        the expert's price or (K < E) the middle of the token's K-th and (K+1)-th best scores."""
        scores = self.gate_logits(x.reshape(-1, self.d)).float()  # (M, E)
        chosen = self.choose(scores, knob)
        own = self.routes(chosen)
        take = own if follow is None else torch.as_tensor(follow, dtype=torch.long).reshape(-1)
        if take.shape != own.shape or bool((take < 0).any()):
            take = own  # (a path that never reached this layer in the artifact: a branch mismatch elsewhere)
        k, bound = int(knob[0]), knob[1:].float().expand_as(scores)
        if k <= 0:
            dist = torch.full_like(scores, float("inf"))
        else:
            if k < self.n:
                top = scores.sort(-1, descending=True).values
                bound = torch.maximum(bound, (top[:, k - 1:k] + top[:, k:k + 1]) / 2)
            dist = (scores - bound).abs()
        differ = self.chosen_of(take) != chosen
        if bool(differ.any()):
            return take, float(dist[differ].max()), True
        return take, float(dist.min()) if dist.numel() else float("inf"), False

    def load_ffn_(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  order: torch.Tensor | None = None, means: torch.Tensor | None = None) -> None:
        """The experts as groups of an FFN's neurons (w1: (F, d), w2: (d, F)): expert e is the neurons
        order[e * G:(e + 1) * G] (default: in their own order), so all E together are the FFN. means:
        (E, d) the experts' mean outputs, which a closed expert then gives (default: nothing)."""
        order = torch.arange(w1.shape[0]) if order is None else order
        if sorted(order.tolist()) != list(range(w1.shape[0])):
            raise ValueError("order must be a permutation of the FFN's neurons")
        e, h, d = self.n, self.h, self.d
        with torch.no_grad():
            self.w1.copy_(w1[order].reshape(e, h, d))
            self.b1.copy_(b1[order].reshape(e, h))
            self.w2.copy_(w2.t()[order].reshape(e, h, d))
            means = torch.zeros(e, d) if means is None else means
            self.c.copy_(-means)
            self.b2.copy_(b2 + means.sum(0))


class Biased(nn.Module):
    """module(x) + bias: an expert as the routed mode runs it."""

    def __init__(self, module: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.module = module
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) + self.bias


def moe_modules(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def set_mode_(model: nn.Module, mode: str) -> None:
    """Switch every MoE layer of `model` to `mode` ("adaptive" or "topk") in place: the same experts and
    routers (what moefy trains before its end-to-end phase does not depend on the mode); recalibrate
    the knob (edge.calibrate_budget_) or retrain (edge.retarget) after."""
    from dataclasses import replace

    from edge.parts import parts

    own = parts(model)
    config = replace(own.config("moe"), mode=mode)  # (validates the mode; a model without MoE raises here)
    for m in moe_modules(model):
        m.mode = mode
    own.set_config("moe", config)


def install_moe(model: nn.Module, config: MoeConfig) -> list[MoE]:
    """Replace every FFN of `model` (in place) by a MoE of the same width, its experts the FFN's
    neurons in their own order (edge.moefy regroups them) and its router untrained."""
    def make(ffn):
        moe = MoE(ffn.fc1.in_features, ffn.fc1.out_features, config, ffn.act)
        moe.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias)
        return moe

    made = replace_ffns(model, make, "a MoE")
    attach(model).add("moe", config)
    return made


def _experts_knob(model: nn.Module) -> torch.Tensor:
    return torch.stack([m.knob_row() for m in moe_modules(model)])  # (A, 1 + E)


def _expert_cases(model: nn.Module, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """No expert, every expert, each expert alone (on every token of every layer), the prices moved
    around the model's own, and K at 1 and E / 2 with the model's own prices."""
    e = full.shape[1] - 1
    free = full.clone()
    free[:, 0] = e

    def priced(price):
        row = free.clone()
        row[:, 1:] = price
        return row

    cases = [("no expert", priced(FORCE)), ("every expert", priced(-FORCE))]
    cases += [(f"expert {i} alone", priced(torch.where(torch.arange(e) == i, -FORCE, FORCE))) for i in range(e)]
    for step in (-1.0, -0.3, 0.3, 1.0):
        row = full.clone()
        row[:, 1:] += step * (row[:, 1:].abs() < FORCE)  # (the forced prices stay forced)
        cases.append((f"expert price {step:+g}", row))
    for k in sorted({1, max(1, e // 2)} - {e}):
        row = full.clone()
        row[:, 0] = k
        cases.append((f"experts K {k}", row))
    return cases


def _moe_plan(model: nn.Module) -> list[dict]:
    found = [(i, m) for i, layer in enumerate(arch_for(model).layers(model), 1) if (m := adaptive_of(layer)) is not None]
    return [{"layer": i, "experts": m.n, "mode": m.mode, "knob": "experts", "index": j} for j, (i, m) in enumerate(found)]


EXPERT_KNOB = Knob("experts", "moes", own=_experts_knob, full=_experts_knob, cases=_expert_cases, plan=_moe_plan)

register(Transform("moe", MoeConfig, install_moe, after=("prune",), before=("quant",), knob=EXPERT_KNOB,
                   export_order=2))
