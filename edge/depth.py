"""Adaptive depth: early-exit heads and MindSkip routers (Router-Tuning, He et al., arXiv 2410.13184).

`add_exits` puts exit heads after chosen layers and trains only them; `add_skips` puts a router
before chosen layers and router-tunes only the routers. `run` is the layer-by-layer forward that
really stops a sequence at an exit and really skips an attention (or a whole block): the work is
not computed and masked, it is not computed. It also counts the FLOPs each sequence spent.

Layers are numbered from 1 as in "layer 3 of 6": an exit `after=3` sits after the third layer, a
router on layer 3 decides whether the third layer's attention runs.

Thresholds are in [0, 1] and confidences and router scores are kept below 1, so that
  exits:   leave when confidence >= threshold (0: everyone leaves at the first exit; 1: nobody leaves);
  routers: run the attention when score >= threshold (0: always run, the full model; 1: always skip).
"""
from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from edge.acm import acm_of
from edge.arch import arch_for, unit
from edge.config import Config, config, integer, one_of, optional, real, sequence_of, setting
from edge.console import terminal
from edge.errors import EdgeError

BELOW_ONE = 1.0 - 1e-6  # confidences and router scores are clamped here: threshold 1 is never met
SKIP_TARGETS = ("attention", "block")


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


def _check_layers(what: str, numbers, n_layers: int, allow_last: bool) -> None:
    top = n_layers if allow_last else n_layers - 1
    bad = [a for a in numbers if not 1 <= a <= top]
    if bad:
        raise EdgeError(f"{what} {bad} do not exist: this model has {n_layers} layers, so use numbers in 1..{top}")


# --- modules ------------------------------------------------------------------------------------
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
            f += sum(2 * m.in_features * m.out_features for m in self.confidence if isinstance(m, nn.Linear))
        return f


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


def exit_heads(model: nn.Module) -> dict[int, ExitHead]:
    return {int(k): m for k, m in getattr(model, "edge_exits", {}).items()}


def routers(model: nn.Module) -> dict[int, Router]:
    return {int(k): m for k, m in getattr(model, "edge_routers", {}).items()}


def install_exits(model: nn.Module, config: ExitConfig) -> None:
    """Attach untrained exit heads (in place); used by add_exits and by edge.load."""
    arch = arch_for(model)
    _check_layers("ExitConfig.after layers", config.after, len(arch.layers(model)), allow_last=False)
    d, _ = arch.dims(model)
    kind, unit = arch.output_kind(model), arch.unit_output(model)
    out_dim = arch.output_dim(model)
    model.edge_exits = nn.ModuleDict({str(a): ExitHead(d, out_dim, kind, unit, config.hidden) for a in config.after})
    model.exit_config = config


def install_skips(model: nn.Module, config: SkipConfig) -> None:
    """Attach routers (in place); used by add_skips and by edge.load."""
    arch = arch_for(model)
    n = len(arch.layers(model))
    layers = config.layers or tuple(range(1, n + 1))
    _check_layers("SkipConfig.layers", layers, n, allow_last=True)
    d, _ = arch.dims(model)
    model.edge_routers = nn.ModuleDict({str(i): Router(d) for i in layers})
    model.skip_config = config


# --- the forward that really skips ----------------------------------------------------------------
@dataclass
class Trace:
    """What each sequence of one `run` did and spent (FLOPs, torch's counting convention)."""

    flops: torch.Tensor  # (B,) FLOPs spent
    full_flops: torch.Tensor  # (B,) FLOPs of the original model on the same sequence
    exit_layer: torch.Tensor  # (B,) number of layers run (L when no exit was taken)
    skipped: torch.Tensor  # (B, L) bool: layer's attention (or block) skipped
    pooled: list[torch.Tensor] = field(default_factory=list)  # per layer (B, d), when collected
    layer_flops: list[torch.Tensor] = field(default_factory=list)  # per layer (B,) spent so far, when collected
    exits: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (y, conf)


def attention_flops(d: int, t: torch.Tensor) -> torch.Tensor:
    """Q, K, V, O projections plus scores and weighted sum, for sequences of t real tokens."""
    return 8 * d * d * t + 4 * d * t * t


def run(model: nn.Module, batch: dict, soft: bool = False, exits: bool = True, collect: bool = False,
        ) -> tuple[torch.Tensor, Trace]:
    """Run `model` layer by layer with its exits, routers and ACMs; returns (output (B, D), trace).

    soft: router-tuning form: every layer runs and its attention output is scaled by the router score
      (differentiable); exits are not taken. exits=False: run to the end. collect: keep every layer's
      pooled hidden state and FLOPs so far, and with exits=False every exit head's (output,
      confidence), in the trace: exit-head training and `take_exits`."""
    arch = arch_for(model)
    layers = arch.layers(model)
    heads, gates = exit_heads(model), routers(model)
    exit_t = model.exit_config.threshold if heads else 1.0
    skip_cfg = getattr(model, "skip_config", None)
    d, f = arch.dims(model)
    h, ctx = arch.embed(model, batch)  # (B, T, d)
    b, n = h.shape[0], len(layers)
    lengths = ctx["tokens"].sum(1).to(torch.float64)  # (B,)
    fixed = arch.fixed_flops(model, ctx)
    trace = Trace(flops=torch.full((b,), fixed, dtype=torch.float64),
                  full_flops=fixed + n * (attention_flops(d, lengths) + 4 * d * f * lengths),
                  exit_layer=torch.full((b,), n, dtype=torch.long), skipped=torch.zeros(b, n, dtype=torch.bool))
    idx = torch.arange(b)  # the sequences still running
    out: torch.Tensor | None = None
    for i, layer in enumerate(layers, 1):
        t = lengths[idx]
        router = gates.get(i)
        if router is None:
            h = _ffn(arch, layer, arch.attention(layer, h, ctx), ctx, trace, idx, t, d, f)
            trace.flops[idx] += attention_flops(d, t)
        else:
            r = router(arch.pool(h, ctx))  # (b,)
            trace.flops[idx] += router.flops()
            if soft:
                full = arch.attention(layer, h, ctx)
                if skip_cfg.target == "attention":
                    h = _ffn(arch, layer, h + r[:, None, None] * (full - h), ctx, trace, idx, t, d, f)
                else:
                    h = h + r[:, None, None] * (_ffn(arch, layer, full, ctx, trace, idx, t, d, f) - h)
                trace.skipped[idx, i - 1] = r < skip_cfg.threshold  # what the hard form would do
                trace.flops[idx] += attention_flops(d, t)  # the soft form computes everything
            else:
                keep = r >= skip_cfg.threshold
                trace.skipped[idx[~keep], i - 1] = True
                h = _apply(lambda x, c: arch.attention(layer, x, c), h, ctx, keep)
                if skip_cfg.target == "attention":
                    h = _ffn(arch, layer, h, ctx, trace, idx, t, d, f)
                else:
                    h = _apply(lambda x, c, sel=keep: _ffn(arch, layer, x, c, trace, idx[sel], t[sel], d, f),
                               h, ctx, keep)
                trace.flops[idx[keep]] += attention_flops(d, t[keep])
        head = heads.get(i)
        if collect:
            trace.pooled.append(arch.pool(h, ctx))
            trace.layer_flops.append(trace.flops.clone())
            if head is not None and not exits:
                trace.exits[i] = head(trace.pooled[-1])
        if head is not None and exits and not soft:
            y, conf = head(arch.pool(h, ctx))
            trace.flops[idx] += head.flops()
            leave = conf >= exit_t
            if leave.any():
                out = _put(out, b, idx[leave], y[leave])
                trace.exit_layer[idx[leave]] = i
                stay = ~leave
                idx, h, ctx = idx[stay], h[stay], _take(ctx, stay)
                if not len(idx):
                    return out, trace
    out = _put(out, b, idx, arch.head(model, h, ctx))
    return out, trace


def take_exits(model: nn.Module, out: torch.Tensor, trace: Trace, threshold: float,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `run` with the exits at `threshold` gives, from one `run(exits=False, collect=True)`:
    (output (B, D), FLOPs (B,), exit layer (B,)). A sequence's path up to its exit does not depend on
    the threshold, so one full pass answers every threshold (the budget sweep uses this)."""
    out, flops, layer = out.clone(), trace.flops.clone(), trace.exit_layer.clone()
    heads = exit_heads(model)
    left = torch.zeros_like(layer, dtype=torch.bool)
    head_cost = 0
    for a in sorted(heads):
        y, conf = trace.exits[a]
        head_cost += heads[a].flops()
        leave = (conf >= threshold) & ~left
        out[leave], flops[leave], layer[leave] = y[leave], trace.layer_flops[a - 1][leave] + head_cost, a
        left |= leave
    flops[~left] += head_cost  # those who stayed to the end paid for every head on the way
    return out, flops, layer


def _ffn(arch, layer, h, ctx, trace, idx, t, d, f):
    """The layer's feed-forward on all of h, adding its FLOPs (the ACM's real choices) to the trace."""
    from edge.flops import acm_flops

    out = arch.feed_forward(layer, h, ctx)
    acm = acm_of(layer)
    if acm is None:
        trace.flops[idx] += 4 * d * f * t
    else:
        k = acm.last_k.reshape(ctx["tokens"].shape).to(torch.float64)  # (b, T) learners run
        trace.flops[idx] += (acm_flops(acm, k) * ctx["tokens"]).sum(1)
    return out


def _take(ctx: dict, sel: torch.Tensor) -> dict:
    return {k: v[sel] for k, v in ctx.items()}


def _apply(fn, h, ctx, sel):
    """h with fn applied to the sequences where sel is True; the others pass through unchanged."""
    if sel.all():
        return fn(h, ctx)
    out = h.clone()
    if sel.any():
        out[sel] = fn(h[sel], _take(ctx, sel))
    return out


def _put(out, b, idx, y):
    if out is None:
        out = y.new_zeros((b, *y.shape[1:]))
    out[idx] = y
    return out


# --- training ---------------------------------------------------------------------------------
def _distil_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss (B,) of an output against the target output of the same kind."""
    if kind == "logits":
        return F.kl_div(out.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return 1 - F.cosine_similarity(out, target, dim=-1)


def quality(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) agreement with the target: cosine for embeddings, same top-1 class for logits."""
    if kind == "logits":
        return (out.argmax(-1) == target.argmax(-1)).to(out.dtype)
    return F.cosine_similarity(out, target, dim=-1)


def fit_linear_(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> None:
    """Set `linear` to the ridge-regularized least-squares map x (N, d) -> y (N, D), in closed form."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    gram = x1.T @ x1
    lam = ridge * gram.diagonal().mean()
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), x1.T @ y.double())  # (d+1, D)
    linear.weight.copy_(w[:-1].T.to(linear.weight.dtype))
    linear.bias.copy_(w[-1].to(linear.bias.dtype))


def add_exits(model: nn.Module, config: ExitConfig, data: list[dict], progress: bool = True,
              labels: list[torch.Tensor] | None = None) -> nn.Module:
    """Return a copy of `model` with exit heads after layers `config.after`, trained (heads only,
    the backbone frozen) to reproduce the model's own final output from each exit.

    labels (a classifier only: a model with a classifier or a task head, edge.add_head): the class of
    every sequence, one (B,) tensor per batch of `data`. Each exit is then the task's own classifier
    at its depth instead of a copy of the final output: an L2-regularized logistic regression of the
    labels on its LayerNorm'd pooled state (edge.evaluate.LinearProbe, fitted on all of `data`), its
    confidence the largest class probability, i.e. how sure it is of the answer, which is what
    deciding to leave needs (a copy of the final output is no surer of the answer than the final
    output is). Use the labelled data the task head was fitted on.

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=2), [batch], progress=False)
    >>> out, trace = edge.run(m, batch)
    >>> trace.exit_layer.tolist()   # threshold 1: nobody leaves early
    [2, 2]
    """
    if not data:
        raise EdgeError("add_exits needs at least one batch of training data")
    kind = arch_for(model).output_kind(model)
    if labels is not None:
        _check_labels(model, kind, data, labels)
    student = copy.deepcopy(model).eval()
    install_exits(student, config)
    heads = exit_heads(student)
    student.requires_grad_(False)
    # the backbone is frozen: its pooled states and final outputs are computed once
    cache = []
    with torch.no_grad():
        for b in data if labels is not None else data[: max(1, min(len(data), config.steps))]:
            out, trace = run(student, b, exits=False, collect=True)
            cache.append(([trace.pooled[a - 1] for a in config.after], out))
    if labels is not None:
        _fit_to_labels_(heads, [c[0] for c in cache], torch.cat(labels))
        return student.requires_grad_(False)
    # each projection starts at its least-squares fit to the final output: every output direction is
    # fitted on its own, including the low-variance ones a gradient fit on cosine leaves behind
    for i, (a, head) in enumerate(sorted(heads.items())):
        with torch.no_grad():
            fit_linear_(head.proj, torch.cat([head.norm(c[0][i]) for c in cache]), torch.cat([c[1] for c in cache]))
    # an embedding head then trains only its confidence (the fit is optimal for the projection);
    # a classifier's head refines its projection on the KL to the final logits
    train = [head.confidence if kind == "embedding" else head for head in heads.values()]
    params = [p for h in train for p in h.parameters()]
    for p in params:  # (the heads came in trainable: everything else stays frozen)
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.lr)
    bar = tqdm(range(config.steps), desc="exit heads", disable=not progress, file=terminal())
    rng = random.Random(0)
    for step in bar:
        pooled, target = cache[rng.randrange(len(cache))]
        loss = 0.0
        for (a, head), x in zip(sorted(heads.items()), pooled):
            y, conf = head(x)
            err = _distil_loss(kind, y, target)
            loss = loss + err.mean()
            if kind == "embedding":  # the confidence head learns the cosine it will reach
                loss = loss + F.mse_loss(conf, (1 - err).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return student.requires_grad_(False)


def _check_labels(model, kind: str, data: list[dict], labels) -> None:
    if kind != "logits":
        raise EdgeError("labels train a classifier's exits, but this model outputs embeddings; "
                        "put the task's head on it first (edge.add_head)")
    classes = arch_for(model).output_dim(model)
    sizes = [len(next(iter(b.values()))) for b in data]
    if len(labels) != len(data) or any(not isinstance(y, torch.Tensor) or y.shape != (n,) for y, n in zip(labels, sizes)):
        raise EdgeError(f"labels must be one (B,) tensor per batch of data ({len(data)} batches), with each batch's size")
    y = torch.cat(labels)
    if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0 or int(y.max()) >= classes:
        raise EdgeError(f"labels must be integer classes in 0..{classes - 1} (the model's {classes} outputs)")


def _fit_to_labels_(heads: dict[int, ExitHead], pooled: list[list[torch.Tensor]], y: torch.Tensor) -> None:
    """Each exit's projection := the logistic regression of y on its LayerNorm'd pooled states."""
    from edge.evaluate import LinearProbe

    for i, (_, head) in enumerate(sorted(heads.items())):
        with torch.no_grad():
            z = head.norm(torch.cat([p[i] for p in pooled]))
        lin = LinearProbe().fit(z, y.long(), classes=head.proj.out_features).as_linear()
        with torch.no_grad():
            head.proj.weight.copy_(lin.weight)
            head.proj.bias.copy_(lin.bias)


def add_skips(model: nn.Module, config: SkipConfig, data: list[dict], progress: bool = True) -> nn.Module:
    """Return a copy of `model` with a MindSkip router per layer, router-tuned (routers only) to
    keep the original output while skipping about `config.skip_rate` of the attentions.

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> m = edge.add_skips(model, edge.SkipConfig(samples=2, threshold=1.0), [batch], progress=False)
    >>> edge.run(m, batch)[1].skipped.all().item()   # threshold 1: every attention skipped
    True
    """
    if not data:
        raise EdgeError("add_skips needs at least one batch of training data")
    teacher = model.eval()
    student = copy.deepcopy(model).eval().requires_grad_(False)
    install_skips(student, config)
    arch = arch_for(student)
    kind = arch.output_kind(student)
    params = [p for r in routers(student).values() for p in r.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.lr)
    keep_target = 1.0 - config.skip_rate
    bar = tqdm(total=config.epochs * config.samples, desc="router-tuning", disable=not progress, file=terminal(), unit="seq")
    for _ in range(config.epochs):
        seen = 0
        for b in data:
            if seen >= config.samples:
                break
            with torch.no_grad():
                target = arch.output(teacher, b)
            scores = []
            hooks = [r.register_forward_hook(lambda m, a, o: scores.append(o)) for r in routers(student).values()]
            try:
                out, _ = run(student, b, soft=True)
            finally:
                for hk in hooks:
                    hk.remove()
            kept = torch.cat(scores).mean()
            loss = _distil_loss(kind, out, target).mean() + config.capacity_weight * (kept - keep_target) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = out.shape[0]
            seen += n
            bar.update(n)
            bar.set_postfix(loss=f"{loss.item():.4f}", kept=f"{kept.item():.2f}")
    bar.close()
    return student.requires_grad_(False)


# --- one budget knob --------------------------------------------------------------------------
EXIT_QUANTILES = 19  # exit thresholds per sweep step: quantiles of the calibration confidences
ACM_GRID = (1.0, 0.75, 0.5)


@dataclass(frozen=True)
class Setting:
    """One operating point of the knobs: exit threshold, router threshold, ACM budget."""

    exit_threshold: float = 1.0
    skip_threshold: float = 0.0
    acm_budget: float | None = None


def apply_setting_(model: nn.Module, s: Setting, calib: list[dict] | None = None) -> None:
    """Set the thresholds (and, given calib, the ACM budget: a recalibration) of `model` in place.
    ACM gates are calibrated with every exit closed and every router open, so that the same setting
    always gives the same model whatever setting came before."""
    if calib is not None and s.acm_budget is not None and getattr(model, "acm_config", None) is not None:
        from edge.convert import calibrate_budget_

        _set_thresholds(model, 1.0, 0.0)
        calibrate_budget_(model, calib, s.acm_budget)
        model.acm_config = replace(model.acm_config, budget=s.acm_budget)
    _set_thresholds(model, s.exit_threshold, s.skip_threshold)


def _set_thresholds(model: nn.Module, exit_threshold: float, skip_threshold: float) -> None:
    if exit_heads(model):
        model.exit_config = replace(model.exit_config, threshold=exit_threshold)
    if routers(model):
        model.skip_config = replace(model.skip_config, threshold=skip_threshold)


def measure(model: nn.Module, batches: list[dict], targets: list[torch.Tensor]) -> dict:
    """Average FLOP fraction (of the original model) and quality against `targets` on `batches`."""
    kind = arch_for(model).output_kind(model)
    spent = full = 0.0
    q = []
    with torch.no_grad():
        for b, t in zip(batches, targets):
            out, trace = run(model, b)
            spent += float(trace.flops.sum())
            full += float(trace.full_flops.sum())
            q.append(quality(kind, out, t))
    return {"flops_frac": spent / full, "quality": float(torch.cat(q).mean())}


def sweep(model: nn.Module, original: nn.Module | None, calib: list[dict],
          use: tuple[str, ...] = ("exits", "skips", "acm"), progress: bool = False, score=None) -> list[dict]:
    """Quality against compute on `calib` over a grid of the knobs the model has (and `use` allows).
    Quality is the agreement with `original` (see `quality`), or `score(outputs (N, D))` when given,
    e.g. an accuracy against labels. One pass per (ACM budget, router threshold) answers every exit
    threshold (`take_exits`). Leaves the model at its full setting."""
    arch = arch_for(model)
    kind = arch.output_kind(model)
    if score is None:
        with torch.no_grad():
            targets = torch.cat([arch.output(original, b) for b in calib])
        score = lambda out: float(quality(kind, out, targets).mean())  # noqa: E731
    use_exits = bool(exit_heads(model)) and "exits" in use
    skip_grid = _skip_grid(model, calib) if routers(model) and "skips" in use else (0.0,)
    acm_grid = ACM_GRID if getattr(model, "acm_config", None) is not None and "acm" in use else (None,)
    rows = []
    bar = tqdm(total=len(skip_grid) * len(acm_grid), desc="budget sweep", disable=not progress, file=terminal())
    for a in acm_grid:
        apply_setting_(model, Setting(1.0, 0.0, a), calib)
        for s_t in skip_grid:
            apply_setting_(model, Setting(1.0, s_t, a))
            with torch.no_grad():
                passes = [run(model, b, exits=False, collect=True) for b in calib]
            for e_t in _exit_grid(passes) if use_exits else (1.0,):
                taken = [take_exits(model, out, trace, e_t) for out, trace in passes]
                spent = sum(float(f.sum()) for _, f, _ in taken)
                full = sum(float(trace.full_flops.sum()) for _, trace in passes)
                rows.append({**asdict(Setting(e_t, s_t, a)), "flops_frac": spent / full,
                             "quality": score(torch.cat([o for o, _, _ in taken]))})
            bar.update(1)
    bar.close()
    apply_setting_(model, Setting(1.0, 0.0, acm_grid[0]), calib if acm_grid[0] is not None else None)
    return rows


def _exit_grid(passes) -> tuple[float, ...]:
    """Exit thresholds at the quantiles of the confidences seen on calib (plus 0 and 1), so that the
    grid is fine where the decisions are, whatever the confidences' scale."""
    conf = torch.cat([c for _, trace in passes for _, c in trace.exits.values()]).float()
    qs = torch.quantile(conf, torch.linspace(0.05, 0.95, EXIT_QUANTILES)).tolist()
    return tuple(sorted({0.0, *[round(q, 6) for q in qs], 1.0}))


def _skip_grid(model, calib) -> tuple[float, ...]:
    """Router thresholds at the quantiles of the scores seen on calib (plus 0 and 1)."""
    scores = []
    hooks = [r.register_forward_hook(lambda m, a, o: scores.append(o)) for r in routers(model).values()]
    saved = model.skip_config
    model.skip_config = replace(saved, threshold=0.0)
    try:
        with torch.no_grad():
            for b in calib:
                run(model, b, exits=False)
    finally:
        model.skip_config = saved
        for hk in hooks:
            hk.remove()
    s = torch.cat(scores).float()
    qs = torch.quantile(s, torch.linspace(0.1, 0.9, 9)).tolist()
    return tuple(sorted({0.0, *[round(q, 6) for q in qs], 1.0}))


def choose(rows: list[dict], budget: float) -> dict:
    """The best-quality row whose FLOP fraction is within `budget`."""
    ok = [r for r in rows if r["flops_frac"] <= budget]
    if not ok:
        least = min(r["flops_frac"] for r in rows)
        raise EdgeError(f"no setting meets budget {budget}: the least compute reachable is {least:.3f} of the "
                        f"original FLOPs; raise the budget or add more exits, skips or a lower ACM budget")
    return max(ok, key=lambda r: (r["quality"], -r["flops_frac"]))


def set_budget_(model: nn.Module, original: nn.Module, budget: float, calib: list[dict],
                use: tuple[str, ...] = ("exits", "skips", "acm"), progress: bool = False) -> dict:
    """The one budget knob: pick, on `calib`, the exit threshold, router threshold and ACM budget
    with the best quality (agreement with `original`) whose average FLOPs are at most `budget` of the
    original model's, and set them in place. Returns the chosen row and the whole sweep.

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=2), [batch], progress=False)
    >>> edge.set_budget_(m, model, 1.0, [batch])["chosen"]["flops_frac"] <= 1.0
    True
    """
    if not (isinstance(budget, (int, float)) and 0.0 < budget <= 1.0):
        raise EdgeError(f"budget must be in (0, 1], got {budget!r}")
    if not calib:
        raise EdgeError("set_budget_ needs at least one batch of calibration data")
    rows = sweep(model, original, calib, use, progress)
    best = choose(rows, budget)
    apply_setting_(model, Setting(best["exit_threshold"], best["skip_threshold"], best["acm_budget"]), calib)
    return {"chosen": best, "sweep": rows}
