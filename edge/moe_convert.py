"""`moefy`: turn a pretrained transformer's FFNs into sigma-MoE layers (edge.moe) by distillation.

  0. grouping: each FFN's neurons are grouped into E experts of equal size by balanced k-means on
     their co-activations (MoEfication's route): a neuron's feature is its contribution on calibration
     tokens (|activation| x the norm of its output weights), so that the neurons that matter for the
     same tokens share an expert and a token's output concentrates in few experts. Each expert's mean
     output moves into the always-added bias (edge.moe.MoE: a closed expert gives its mean). All E
     experts together are the FFN exactly;
  1. router distillation: each router learns, from hooks on the original model, the log of each
     expert's share of the token's FFN output (its output's squared norm over the output's mean
     square), so that its gates rank the experts by contribution and gate_bias is a price per expert;
  2. end-to-end (edge.convert.train_end_to_end, acmize's phase 3): hard gates (straight-through),
     experts and routers train to reproduce the original model's output across the knob's budgets,
     with the paper's expert dropout and entropy regularizer;
then the knob is calibrated to the budget on calibration data.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.convert import DistillConfig, _act_fn, _cycle, _ffn_pairs, _retarget_, start_conversion, train_gates
from edge.errors import EdgeError
from edge.moe import MoE, MoeConfig, install_moe

GROUP_ITERS = 15  # balanced k-means rounds
GROUP_TOKENS = 4096  # calibration tokens a neuron's feature is made of


def moefy(model: nn.Module, config: MoeConfig, data: list[dict], calib: list[dict] | None = None,
          distill: DistillConfig = DistillConfig(), progress: bool = True) -> nn.Module:
    """Return a sigma-MoE copy of `model`, distilled on `data` (a list of input batches); the
    knob calibrated to config.budget on `calib` (default: the first 8 batches of data). The steps:
    distill.gate_steps of router distillation, distill.e2e_steps end-to-end (by default the precision's
    e2e_alone_steps: repr_steps is acmize's, and the experts start as the FFN's own neurons, nothing to
    distil there, so the end-to-end phase takes that time).

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> moe = edge.moefy(model, edge.MoeConfig(budget=0.6, experts=4), [batch],
    ...                  distill=edge.DistillConfig(gate_steps=2, e2e_steps=2), progress=False)
    >>> len(edge.moe.moe_modules(moe))
    2
    """
    s = start_conversion(model, data, distill, "moefy", lambda m: install_moe(m, config), phase1=MoE.phase1)
    arch, distill, rng, teacher, ffns, student, moes = s
    first = data[: max(1, min(4, len(data)))]
    orders = [balanced_groups(c, m.n, distill.seed) for m, c in zip(moes, _contributions(teacher, arch, ffns, first))]
    for moe, ffn, order in zip(moes, ffns, orders):
        moe.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, order)
    for moe, ffn, order, mean in zip(moes, ffns, orders, _expert_means(teacher, arch, ffns, moes, first)):
        moe.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, order, mean)
    train_gates(teacher, arch, ffns, moes, _cycle(data, rng), distill, progress, _router_loss, "phase 1/2 routers")
    return _retarget_(student, teacher, config.budget, data, calib or data[:8], distill, progress,
                      desc="phase 2/2 end-to-end")


def _contributions(teacher, arch, ffns, batches) -> list[torch.Tensor]:
    """Per FFN, (F, T) each neuron's contribution |activation| x |output weights| on up to
    GROUP_TOKENS real tokens of `batches`."""
    got = [[] for _ in ffns]
    for b in batches:
        for out, f, (x, _) in zip(got, ffns, _ffn_pairs(teacher, arch, ffns, b)):
            out.append(_act_fn(f.act)(F.linear(x, f.fc1.weight, f.fc1.bias)).abs())
    return [torch.cat(a)[:GROUP_TOKENS].t() * f.fc2.weight.norm(dim=0)[:, None] for a, f in zip(got, ffns)]


def _expert_means(teacher, arch, ffns, moes, batches) -> list[torch.Tensor]:
    """Per MoE, (E, d) each expert's mean output (its neurons' part of the FFN) on the real tokens."""
    sums, count = [torch.zeros(m.n, m.d) for m in moes], 0
    with torch.no_grad():
        for b in batches:
            pairs = _ffn_pairs(teacher, arch, ffns, b)
            for s, m, (x, _) in zip(sums, moes, pairs):
                s += torch.stack([m.run_expert(x, e) for e in range(m.n)]).sum(1)  # (c is 0 here)
            count += pairs[0][0].shape[0]
    return [s / max(count, 1) for s in sums]


def balanced_groups(features: torch.Tensor, groups: int, seed: int = 0) -> torch.Tensor:
    """A permutation of the F rows of `features` (F, T) whose consecutive F / groups entries are one
    group: balanced k-means on the rows' directions (cosine), every group the same size. A row goes
    to its most similar centroid that has room, the most confident rows first (greedy, exact sizes)."""
    n = features.shape[0]
    if n % groups:
        raise EdgeError(f"{n} neurons do not split into {groups} equal experts; pick a divisor")
    size = n // groups
    f = F.normalize(features.float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = f[torch.randperm(n, generator=gen)[:groups]]
    assign = torch.arange(n) // size
    for _ in range(GROUP_ITERS):
        sim = f @ centroids.t()  # (F, E)
        new = _assign_balanced(sim, size)
        if torch.equal(new, assign):
            break
        assign = new
        centroids = F.normalize(torch.stack([f[assign == g].mean(0) for g in range(groups)]), dim=1)
    return torch.argsort(assign, stable=True)


def _assign_balanced(sim: torch.Tensor, size: int) -> torch.Tensor:
    """Each row to a column, `size` rows per column: pairs taken in order of similarity."""
    n, groups = sim.shape
    assign, room, left = [-1] * n, [size] * groups, n
    for flat in torch.argsort(sim.reshape(-1), descending=True).tolist():
        row, col = divmod(flat, groups)
        if assign[row] < 0 and room[col]:
            assign[row] = col
            room[col] -= 1
            left -= 1
            if not left:
                break
    return torch.tensor(assign)


def expert_shares(moe: MoE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, E) the squared norm of what running each expert adds on tokens x (M, d) (its output minus
    its mean, which a closed expert gives), over the mean square of the FFN's output y (M, d) on them:
    what a router learns to predict (its log)."""
    a = moe.act(torch.einsum("md,egd->meg", x, moe.w1) + moe.b1)  # (M, E, G)
    out = torch.einsum("meg,egd->med", a, moe.w2) + moe.c  # (M, E, d)
    return out.pow(2).mean(-1) / y.pow(2).mean()


def _router_loss(m: MoE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = (expert_shares(m, x, y).float() + 1e-6).log()
    return F.mse_loss(m.router(x).float(), target)
