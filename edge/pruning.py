"""One-shot structured pruning under a FLOP budget (OPTIN: Khaki and Plataniotis, "The Need for Speed:
Pruning Transformers with One Recipe", 2024), as a transform: attention heads and FFN neurons are
removed for good (their rows and columns sliced out of the projections), leaving a smaller dense
model that every runtime runs fast with no control flow.

Importance, without gradients, from one small calibration batch: each unit (a head, a neuron) is
masked in turn (a head: its slice of the output projection's input zeroed; a neuron: its activation
zeroed) and the damage is measured along the rest of the network's trajectory: for every later layer,
the squared error between the token-token Gram matrices (cosine similarities of the tokens'
features) of the masked and the original model, averaged over token pairs, plus `kd_weight` times
the output's distillation loss (for an embedding model 2 (1 - cosine), the squared distance of the unit
vectors; KL divergence for a classifier). Many units are scored in one pass: the batch is repeated once per unit,
each copy with its own mask, from the layer the units sit in onwards (the layers before it are the
original's, computed once; a neuron's copies start after its layer's attention, which they share).

The budget: a fraction of the model's FLOPs at the calibration sequences' mean length. The solver
sweeps the number of heads kept (best first) and fills what FLOPs remain with neurons in rank order,
each layer's FFN width rounded down to a multiple of `multiple` (at least one multiple: an FFN of
width 0 would leave the runtimes zero-sized matrices); it keeps the split that retains the most
importance. A layer whose every head goes keeps its residual path (edge.arch.NoHeads).

Prune first: ACMs then come from the pruned FFNs (edge.acmize), exits and routers are trained on the
pruned model, int8 quantizes it last.

    >>> import edge
    >>> m, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> p = edge.prune(m, edge.PruneConfig(flops=0.7, multiple=8), [batch], progress=False)
    >>> from edge.parts import parts
    >>> len(parts(p).config("prune").ffn_widths)
    2
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.arch import Arch, arch_for
from edge.config import Config, boolean, config, integer, real, sequence_of, setting
from edge.errors import EdgeError
from edge.forward import attention_flops, distil_loss
from edge.parts import Transform, attach, parts, register

ROWS_PER_PASS = 256  # sequences (copies of the calibration batch) run together while scoring


@config("prune")
@dataclass(frozen=True)
class PruneConfig(Config):
    """flops: the fraction of the model's FLOPs to keep; heads / neurons: what may be pruned;
    kd_weight: the output term's weight in the importance; sequences: calibration sequences scored;
    multiple: FFN widths are kept in multiples of it; refit: re-solve the output projections of what is
    kept (least squares, on the first refit_sequences calibration sequences). kept_heads (per layer, the original indices of
    the heads kept) and ffn_widths (per layer) are what `prune` chose: empty before."""

    flops: float = setting(real(0, 1, low_open=True), 0.6)
    heads: bool = setting(boolean(), True)
    neurons: bool = setting(boolean(), True)
    kd_weight: float = setting(real(0), 1.0)
    sequences: int = setting(integer(1), 8)
    multiple: int = setting(integer(1), 32)
    refit: bool = setting(boolean(), True)
    refit_sequences: int = setting(integer(1), 1024)
    kept_heads: tuple[tuple[int, ...], ...] = setting(sequence_of(sequence_of(integer(0))), ())
    ffn_widths: tuple[int, ...] = setting(sequence_of(integer(1)), ())

    def check(self):
        if not (self.heads or self.neurons):
            raise EdgeError("PruneConfig: heads and neurons are both off; nothing could be pruned")
        if len(self.kept_heads) != len(self.ffn_widths):
            raise EdgeError(f"PruneConfig.kept_heads and ffn_widths must have one entry per layer each, got "
                            f"{len(self.kept_heads)} and {len(self.ffn_widths)}")
        for i, kept in enumerate(self.kept_heads, 1):
            if len(set(kept)) != len(kept):
                raise EdgeError(f"PruneConfig.kept_heads names a head twice in layer {i}: {list(kept)}")


# --- the model's shape ----------------------------------------------------------------------------

def _slice(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep the outputs (dim 0) or inputs (dim 1) `idx` of `lin`, in place."""
    lin.weight = nn.Parameter(lin.weight.detach().index_select(dim, idx).clone(), requires_grad=False)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach().index_select(0, idx).clone(), requires_grad=False)
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)


def _keep_heads(arch: Arch, layer: nn.Module, kept: list[int]) -> None:
    heads = arch.heads(layer)
    if not kept:
        arch.drop_attention(layer)
        return
    idx = heads.columns(sorted(kept))
    for lin in (heads.q, heads.k, heads.v):
        _slice(lin, idx, 0)
    _slice(heads.o, idx, 1)
    arch.set_heads(layer, len(kept))


def _keep_neurons(arch: Arch, layer: nn.Module, config, idx: torch.Tensor) -> None:
    ffn = arch.ffn(layer, config)
    _slice(ffn.fc1, idx, 0)
    _slice(ffn.fc2, idx, 1)


def _shape(arch: Arch, model: nn.Module) -> tuple[list[int], list[int], int]:
    """(heads per layer, FFN width per layer, head size) of an unpruned model."""
    layers = arch.layers(model)
    heads = [arch.heads(layer) for layer in layers]
    if any(h is None for h in heads):
        raise EdgeError("this model is pruned already; prune the original model once, at the budget you want")
    return ([h.count for h in heads], [arch.ffn(layer, model.config).fc1.out_features for layer in layers],
            heads[0].head_dim)


def install_prune(model: nn.Module, config: PruneConfig) -> None:
    """Give `model` (unpruned) the shape `config` records, in place (edge.load, before the weights)."""
    arch = arch_for(model)
    counts, widths, _ = _shape(arch, model)
    if len(config.kept_heads) != len(counts):
        raise EdgeError(f"the pruning recorded has {len(config.kept_heads)} layer(s) but the model has {len(counts)}")
    for i, (kept, width, h, f) in enumerate(zip(config.kept_heads, config.ffn_widths, counts, widths), 1):
        if any(k >= h for k in kept) or width > f:  # (all checked before the model is touched)
            raise EdgeError(f"the pruning recorded for layer {i} (heads {list(kept)}, FFN width {width}) does not fit "
                            f"its {h} heads and FFN width {f}")
    for layer, kept, width in zip(arch.layers(model), config.kept_heads, config.ffn_widths):
        _keep_heads(arch, layer, list(kept))
        _keep_neurons(arch, layer, model.config, torch.arange(width))
    attach(model).add("prune", config)


# --- importance -------------------------------------------------------------------------------------

def _gram(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, T) cosine similarities between the real tokens' features (0 where either is padding)."""
    x = F.normalize(h, dim=-1) * tokens[..., None]
    return x @ x.transpose(1, 2)


def _repeat(x: torch.Tensor, r: int) -> torch.Tensor:
    return x.repeat(r, *([1] * (x.dim() - 1)))


@dataclass
class _Reference:
    """The original model on the calibration batch: each layer's input, Gram targets, the output."""

    inputs: list[torch.Tensor]  # the hidden states entering layer i (B, T, d)
    mids: list[torch.Tensor]  # after layer i's attention (B, T, d): where a neuron's copies start
    grams: list[torch.Tensor]  # after layer i (B, T, T)
    out: torch.Tensor
    ctx: dict
    pairs: torch.Tensor  # (B,) real token pairs per sequence


def _reference(arch: Arch, model: nn.Module, batch: dict) -> _Reference:
    h, ctx = arch.embed(model, batch)
    inputs, mids, grams = [], [], []
    for layer in arch.layers(model):
        inputs.append(h)
        mids.append(arch.attention(layer, h, ctx))
        h = arch.feed_forward(layer, mids[-1], ctx)
        grams.append(_gram(h, ctx["tokens"]))
    n = ctx["tokens"].sum(1).to(h.dtype)
    return _Reference(inputs, mids, grams, arch.head(model, h, ctx), ctx, n * n)


def _damage(arch: Arch, model: nn.Module, ref: _Reference, start: int, where: nn.Linear, masks: torch.Tensor,
            kd_weight: float, kind: str, in_ffn: bool) -> torch.Tensor:
    """(R,) damage of R masks over the input features of `where` (a linear of layer `start`, 0-based;
    in_ffn: of its FFN, so that the copies start after its attention, which they all share)."""
    r, b = masks.shape[0], ref.inputs[start].shape[0]
    m = masks.repeat_interleave(b, 0)[:, None, :]  # (R*B, 1, W)
    ctx = {k: _repeat(v, r) for k, v in ref.ctx.items()}
    h = _repeat((ref.mids if in_ffn else ref.inputs)[start], r)
    handle = where.register_forward_pre_hook(lambda _mod, args: (args[0] * m, *args[1:]))
    loss = h.new_zeros(r * b)
    try:
        for i, layer in enumerate(arch.layers(model)[start:], start):
            if not (in_ffn and i == start):
                h = arch.attention(layer, h, ctx)
            h = arch.feed_forward(layer, h, ctx)
            loss += ((_gram(h, ctx["tokens"]) - _repeat(ref.grams[i], r)) ** 2).sum((1, 2)) / _repeat(ref.pairs, r)
    finally:
        handle.remove()
    loss += kd_weight * _output_damage(kind, arch.head(model, h, ctx), _repeat(ref.out, r))
    return loss.view(r, b).mean(1)


def _output_damage(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) the output term: KL divergence for logits; for an embedding, the squared distance of the unit
    vectors, 2 (1 - cosine) computed without the cancellation of 1 - cosine (one neuron moves the
    cosine by less than float32 resolves near 1)."""
    if kind == "logits":
        return distil_loss(kind, out, target)
    return ((F.normalize(out, dim=-1) - F.normalize(target, dim=-1)) ** 2).sum(-1)


def _scores(arch: Arch, model: nn.Module, ref: _Reference, start: int, where: nn.Linear, units: int, size: int,
            kd_weight: float, kind: str, in_ffn: bool, tick) -> torch.Tensor:
    """(units,) damage of masking each unit (a block of `size` input features of `where`) alone."""
    b = ref.inputs[start].shape[0]
    per_pass = max(1, ROWS_PER_PASS // b)
    out = []
    for first in range(0, units, per_pass):
        r = min(per_pass, units - first)
        masks = torch.ones(r, units * size)
        for j in range(r):
            masks[j, (first + j) * size:(first + j + 1) * size] = 0
        out.append(_damage(arch, model, ref, start, where, masks, kd_weight, kind, in_ffn))
        tick(r)
    return torch.cat(out)


def importance(model: nn.Module, batch: dict, config: PruneConfig, progress: bool = True,
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the damage of pruning each head and each FFN neuron alone (empty where that kind is
    not pruned): ([(H_i,)], [(F_i,)])."""
    from tqdm import tqdm

    from edge.console import terminal

    arch = arch_for(model)
    counts, widths, dh = _shape(arch, model)
    kind = arch.output_kind(model)
    total = sum(counts) * config.heads + sum(widths) * config.neurons
    heads, neurons = [], []
    with torch.no_grad(), tqdm(total=total, desc="scoring heads and neurons", disable=not progress,
                               file=terminal()) as bar:
        tick = bar.update
        ref = _reference(arch, model, batch)
        for i, layer in enumerate(arch.layers(model)):
            heads.append(_scores(arch, model, ref, i, arch.heads(layer).o, counts[i], dh, config.kd_weight, kind, False,
                                 tick) if config.heads else torch.zeros(0))
            neurons.append(_scores(arch, model, ref, i, arch.ffn(layer, model.config).fc2, widths[i], 1,
                                   config.kd_weight, kind, True, tick) if config.neurons else torch.zeros(0))
    return heads, neurons


# --- the budget -------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What to keep: per layer the heads (original indices) and the FFN neurons, and the FLOP fraction
    that leaves at the calibration length."""

    heads: list[list[int]]
    neurons: list[torch.Tensor]
    fraction: float


@dataclass(frozen=True)
class Costs:
    """FLOPs per token at `tokens` real tokens a sequence: of one head, one FFN neuron, the rest of the
    model (embeddings, readout), and the unpruned model."""

    head: float
    neuron: float
    fixed: float
    full: float

    @staticmethod
    def of(counts: list[int], widths: list[int], d: int, head_dim: int, tokens: float, fixed: float) -> "Costs":
        head = float(attention_flops(d, torch.tensor(tokens), head_dim)) / tokens
        return Costs(head, 4.0 * d, fixed, fixed + sum(counts) * head + sum(widths) * 4.0 * d)

    def least(self, counts: list[int], widths: list[int], config: PruneConfig) -> float:
        """The smallest fraction pruning can reach: no head left (where heads are pruned), every FFN at
        its floor of `multiple` neurons (where neurons are)."""
        ffn = sum(min(config.multiple, w) for w in widths) if config.neurons else sum(widths)
        return (self.fixed + ffn * self.neuron + (0 if config.heads else sum(counts) * self.head)) / self.full


def solve(head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor], counts: list[int], widths: list[int],
          costs: Costs, config: PruneConfig) -> Plan:
    """The split of `config.flops` between heads and neurons that keeps the most importance."""
    budget = config.flops * costs.full
    layers = range(len(counts))
    # heads, best first ((score, layer, head)); all of them when heads are not pruned
    ranked_heads = sorted(((float(s), i, h) for i in layers for h, s in enumerate(head_scores[i])), reverse=True)
    head_choices = range(len(ranked_heads) + 1) if config.heads else [None]
    order = [torch.argsort(neuron_scores[i], descending=True) if config.neurons else torch.arange(widths[i])
             for i in layers]
    floor = [min(config.multiple, w) for w in widths]  # the least FFN a layer keeps
    best = None
    for n_heads in head_choices:
        kept = [[] for _ in layers] if n_heads is not None else [list(range(c)) for c in counts]
        for _, i, h in ranked_heads[:n_heads or 0]:
            kept[i].append(h)
        left = budget - costs.fixed - sum(map(len, kept)) * costs.head
        if config.neurons:
            width = _fill(neuron_scores, order, floor, widths, int(left // costs.neuron), config.multiple)
            if width is None:
                continue
        else:
            width = list(widths)
            if left < sum(widths) * costs.neuron:
                continue
        kept_score = (sum(float(head_scores[i][kept[i]].sum()) for i in layers if config.heads)
                      + sum(float(neuron_scores[i][order[i][:width[i]]].sum()) for i in layers if config.neurons))
        if best is None or kept_score > best[0]:
            cost = costs.fixed + sum(map(len, kept)) * costs.head + sum(width) * costs.neuron
            best = (kept_score, kept, width, cost)
    if best is None:
        _refuse(config, costs.least(counts, widths, config))
    _, kept, width, cost = best
    return Plan([sorted(k) for k in kept], [order[i][:width[i]].sort().values for i in layers], cost / costs.full)


def _refuse(config: PruneConfig, least: float) -> None:
    keeps = f"every FFN keeps {config.multiple} neurons" if config.neurons else "every FFN neuron is kept"
    raise EdgeError(f"a FLOP fraction of {config.flops:g} is below the smallest model pruning leaves ({least:.3f} of "
                    f"the FLOPs: {keeps}{'' if config.heads else ', every head is kept'}); raise flops")


def _fill(scores, order, floor, widths, n: int, multiple: int) -> list[int] | None:
    """FFN widths keeping at most `n` neurons: the best neurons over all layers, each layer's count
    rounded down to a multiple of `multiple` and at least its floor; None if the floors alone exceed n."""
    if n < sum(floor):
        return None
    layer_of = torch.cat([torch.full((w,), i) for i, w in enumerate(widths)])
    flat = torch.cat(scores)
    top = torch.argsort(flat, descending=True)[:n]
    count = torch.bincount(layer_of[top], minlength=len(widths)).tolist()
    width = [max(f, min(w, c // multiple * multiple)) for c, f, w in zip(count, floor, widths)]
    while sum(width) > n:  # (the floors pushed it over: take multiples back from the widest)
        i = max(range(len(width)), key=lambda j: width[j] - floor[j])
        width[i] -= min(multiple, width[i] - floor[i])
    return width


def _calibration(batches: list[dict], sequences: int) -> dict:
    """The first `sequences` sequences of `batches`, as one batch (batches padded to other lengths are
    padded to the longest with zeros: masked out where the model has an attention mask)."""
    if not batches:
        raise EdgeError("pruning needs calibration data: pass at least one batch")
    taken = _sequences(batches, sequences)
    got = {}
    for k in taken[0]:
        parts_ = [b[k] for b in taken]
        if len({p.shape[1:] for p in parts_}) > 1:
            t = max(p.shape[1] for p in parts_)
            parts_ = [F.pad(p, (0, 0) * (p.dim() - 2) + (0, t - p.shape[1])) for p in parts_]
        got[k] = torch.cat(parts_)
    if "attention_mask" in got:  # (padding past the longest kept sequence is dropped)
        t = int(got["attention_mask"].sum(1).max())
        got = {k: v[:, :t] if v.dim() == 2 else v for k, v in got.items()}
    return got


def prune(model: nn.Module, config: PruneConfig, calib: list[dict], progress: bool = True,
          scores: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> nn.Module:
    """A pruned copy of `model`: its heads and FFN neurons scored on `calib` (the first
    `config.sequences` sequences), the least important removed until the model costs `config.flops`
    of its FLOPs. The copy records what it kept (its parts' "prune" config) and saves, loads and
    exports like any edge model. scores: (head, neuron) importances per layer, as `importance` gives
    them, to prune the same model at several budgets after scoring it once (or to rank by another
    criterion); the larger, the more a unit is kept."""
    if parts(model).has("prune"):
        raise EdgeError("this model is pruned already; prune the original model once, at the budget you want")
    later = [n for n in ("acm", "exits", "skips", "quant") if parts(model).has(n)]
    if later:
        raise EdgeError(f"this model has {', '.join(later)} installed; prune comes first: prune the original model, "
                        "then convert it")
    arch = arch_for(model)
    original, model = model, copy.deepcopy(model).eval()
    batch = _calibration(calib, config.sequences)
    counts, widths, dh = _shape(arch, model)
    with torch.no_grad():
        h, ctx = arch.embed(model, batch)
    tokens = float(ctx["tokens"].sum(1).double().mean())
    costs = Costs.of(counts, widths, arch.dims(model)[0], dh, tokens, arch.fixed_flops(model, ctx) / tokens)
    if costs.least(counts, widths, config) > config.flops:  # (said before minutes of scoring)
        _refuse(config, costs.least(counts, widths, config))
    head_scores, neuron_scores = scores if scores is not None else importance(model, batch, config, progress)
    plan = solve(head_scores, neuron_scores, counts, widths, costs, config)
    for layer, kept, idx in zip(arch.layers(model), plan.heads, plan.neurons):
        _keep_heads(arch, layer, kept)
        if config.neurons:
            _keep_neurons(arch, layer, model.config, idx)
    if config.refit:
        with torch.no_grad():
            _refit(arch, original, model, plan, counts, widths, _sequences(calib, config.refit_sequences))
    done = PruneConfig(**{**config.to_dict(), "kept_heads": plan.heads,
                          "ffn_widths": [len(i) if config.neurons else w for i, w in zip(plan.neurons, widths)]})
    attach(model).add("prune", done)
    return model.requires_grad_(False)


# --- the refit ------------------------------------------------------------------------------------

REFIT_DAMPING = 1e-2  # ridge term, relative to the mean diagonal of A^T A


def _sequences(batches: list[dict], n: int) -> list[dict]:
    """The batches holding the first n sequences (the last one cut)."""
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        out.append({k: v[:left] for k, v in b.items()})
        left -= len(next(iter(b.values())))
    return out


def _solve_into(lin: nn.Linear, full: nn.Linear, idx: torch.Tensor, runs: list[tuple]) -> None:
    """lin.weight := W minimizing the sum over `runs` of |X[:, idx] W^T - X full.weight^T|^2 (+ ridge),
    X the input of `full` on the real tokens while each run's callable runs (runs: [(callable, tokens)]):
    what the kept inputs must do to give the full layer's output (the bias is unchanged: both sides have
    it). The normal equations are summed batch by batch, so memory does not grow with the data."""
    seen, g, r = [], 0, 0
    weight = full.weight.detach().double()
    handle = full.register_forward_pre_hook(lambda _mod, args: seen.append(args[0]))
    try:
        for run, tokens in runs:
            run()
            x = seen.pop()[tokens].double()
            a = x[:, idx]
            g, r = g + a.T @ a, r + (a.T @ x) @ weight.T
    finally:
        handle.remove()
    g += REFIT_DAMPING * g.diagonal().mean().clamp(min=1e-12) * torch.eye(len(idx), dtype=g.dtype)
    lin.weight.copy_(torch.linalg.solve(g, r).T.to(lin.weight.dtype))


def _refit(arch: Arch, original: nn.Module, pruned: nn.Module, plan: Plan, counts: list[int], widths: list[int],
           batches: list[dict]) -> None:
    """Layer by layer, on the pruned model's own hidden states: the output projection of the kept heads
    and the second FFN matrix of the kept neurons re-solved to give what the ORIGINAL layer's attention
    and FFN give on the same input (so the error of one layer is not handed on to the next)."""
    states = [arch.embed(pruned, b) for b in batches]
    for i, (old, new) in enumerate(zip(arch.layers(original), arch.layers(pruned))):
        heads, full_heads = arch.heads(new), arch.heads(old)
        if heads is not None and len(plan.heads[i]) < counts[i]:
            _solve_into(heads.o, full_heads.o, full_heads.columns(plan.heads[i]),
                        [(lambda h=h, c=c: arch.attention(old, h, c), c["tokens"]) for h, c in states])
        mids = [(arch.attention(new, h, c), c) for h, c in states]
        if len(plan.neurons[i]) < widths[i]:
            _solve_into(arch.ffn(new, pruned.config).fc2, arch.ffn(old, original.config).fc2, plan.neurons[i],
                        [(lambda m=m, c=c: arch.feed_forward(old, m, c), c["tokens"]) for m, c in mids])
        states = [(arch.feed_forward(new, m, c), c) for m, c in mids]


register(Transform("prune", PruneConfig, install_prune, before=("acm", "quant")))
