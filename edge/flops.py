"""Exact FLOP accounting for adaptive FFNs (ACMs, sigma-MoE layers: edge.adaptive).

Convention (the one torch.utils.flop_counter uses): a matrix multiply of (M, K) by (K, N) costs
2*M*K*N FLOPs; bias adds, activations, softmax and norms are not counted. Under it, per token:
  original FFN          4 * d * F
  ACM gate              2 * d * g + 2 * g * (N + 1)
  MoE router            2 * d * g + 2 * g * E (g = 0: a linear router, 2 * d * E)
  k units of width h    4 * d * h * k
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from edge.adaptive import AdaptiveFFN


def ffn_flops(m: AdaptiveFFN) -> int:
    """FLOPs per token of the FFN an adaptive FFN replaced (hidden F = N * h)."""
    return m.ffn_flops()


def gate_flops(m: AdaptiveFFN) -> int:
    return m.gate_flops()


def learner_flops(m: AdaptiveFFN) -> int:
    """FLOPs per token of one unit (an ACM learner, a MoE expert)."""
    return m.unit_flops()


def acm_flops(m: AdaptiveFFN, k: torch.Tensor) -> torch.Tensor:
    """FLOPs per token for choices k (any shape); a static choice runs no gate."""
    return m.flops(k)


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs torch counts for one call (used for the whole-model figure and to cross-check)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


@dataclass
class BudgetMeter:
    """Accumulates the gate choices of every adaptive FFN over batches of real tokens."""

    modules: list[AdaptiveFFN]

    def __post_init__(self):
        self.k_sum = [0.0] * len(self.modules)
        self.k_hist = [torch.zeros(m.n + 1, dtype=torch.long) for m in self.modules]
        self.tokens = 0

    def update(self, token_mask: torch.Tensor) -> None:
        """Record the last forward's choices, counting only positions where token_mask is True."""
        for i, m in enumerate(self.modules):
            k = m.last_k.reshape(token_mask.shape)[token_mask]
            self.k_sum[i] += float(k.sum())
            self.k_hist[i] += torch.bincount(k, minlength=m.n + 1)
        self.tokens += int(token_mask.sum())

    def per_module(self) -> list[float]:
        """Average compute of each adaptive FFN as a fraction of its original FFN."""
        return [float(m.fraction(s / max(self.tokens, 1))) for m, s in zip(self.modules, self.k_sum)]

    def ffn_fraction(self) -> float:
        """Average compute over all adaptive FFNs, as a fraction of the original FFNs' FLOPs."""
        total = sum(ffn_flops(m) for m in self.modules)
        return sum(f * ffn_flops(m) for f, m in zip(self.per_module(), self.modules)) / total

    def model_fraction(self, ffn_share: float) -> float:
        """Whole-model fraction, given the FFNs' share of the original model's FLOPs."""
        return 1.0 - ffn_share + ffn_share * self.ffn_fraction()

    def report(self, ffn_share: float | None = None) -> dict:
        out = {"tokens": self.tokens, "ffn_fraction": self.ffn_fraction(),
               "per_module_ffn_fraction": self.per_module(),
               "k_histogram": [h.tolist() for h in self.k_hist]}
        if ffn_share is not None:
            out["ffn_share_of_model"] = ffn_share
            out["model_fraction"] = self.model_fraction(ffn_share)
        return out
