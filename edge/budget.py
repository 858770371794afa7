"""The one budget knob of an adaptive model: the ACMs' gate biases calibrated to a FLOP budget
(`calibrate_budget_`, `measure_budget`), a sweep of every knob (exit threshold, router threshold, ACM
budget) on calibration data, and `set_budget_`, which sets the best setting within a FLOP budget."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edge.adaptive import adaptive_ffns
from edge.arch import arch_for
from edge.console import terminal
from edge.errors import EdgeError
from edge.exits import exit_heads
from edge.flops import BudgetMeter
from edge.forward import output, quality, run, take_exits
from edge.parts import parts
from edge.skips import routers


# --- the ACMs' knob: gate biases calibrated to a budget -------------------------------------------
KNOB = (1.0, 0.75, 0.5, 0.35, 0.25)  # the budgets one conversion serves (bench/knob.py measures them)


def measure_budget(model: nn.Module, batches: list[dict]) -> BudgetMeter:
    """Run `model` on `batches` (inference form) and return the accumulated gate choices."""
    arch = arch_for(model)
    meter = BudgetMeter(adaptive_ffns(model))
    with torch.no_grad():
        for b in batches:
            output(model, b)
            meter.update(arch.token_mask(b, meter.modules[0].last_k.shape))
    return meter


def calibrate_budget_(model: nn.Module, batches: list[dict], budget: float, iters: int = 30) -> list[float]:
    """Set each adaptive FFN's gate bias (the budget knob: an ACM's, a MoE's) so that its average compute
    on the real tokens of `batches` is at most `budget` of its FFN, as close as bisection in `iters`
    steps gets (AdaptiveFFN.calibrate_); at budget 1.0, the top of the knob, every token runs every
    unit, and the gate's ~2% comes on top (the learners start as the original FFN's exact partition;
    how close a conversion's top stays to the original: bench/results/knob.txt).

    Every layer gets the same budget and spends it where its gate predicts the most benefit, so an
    adaptive model is never worse placed than the static one that gives each token the same k.
    Layers are calibrated in order, each on its inputs under the already calibrated earlier layers,
    in one layer-by-layer pass over `batches` (every layer runs: exits and routers are not taken),
    then bisection on the gate scores alone. Returns the biases."""
    arch = arch_for(model)
    biases = []
    with torch.no_grad():
        states = [(b, *arch.embed(model, b)) for b in batches]  # (batch, hidden states, context)
        for layer in arch.layers(model):
            states = [(b, arch.attention(layer, h, ctx), ctx) for b, h, ctx in states]
            for acm in adaptive_ffns(layer):
                inputs = []  # its inputs over real tokens (a pass that stops short of the units)
                for b, h, ctx in states:
                    def record(x, b=b):
                        inputs.append(x[arch.token_mask(b, x.shape)])
                        return x
                    arch.feed_forward(layer, h, ctx, ffn=record)
                biases.append(acm.calibrate_(acm.gate_logits(torch.cat(inputs)), budget, iters))
            states = [(b, arch.feed_forward(layer, h, ctx), ctx) for b, h, ctx in states]
    return biases


# --- every knob ---------------------------------------------------------------------------------
EXIT_QUANTILES = 19  # exit thresholds per sweep step: quantiles of the calibration confidences
ACM_GRID = (1.0, 0.75, 0.5)


@dataclass(frozen=True)
class Setting:
    """One operating point of the knobs: exit threshold, router threshold, adaptive FFN budget (an
    ACM's or a MoE's: `acm_budget`, the name the presets and sweeps have always used)."""

    exit_threshold: float = 1.0
    skip_threshold: float = 0.0
    acm_budget: float | None = None


def apply_setting_(model: nn.Module, s: Setting, calib: list[dict] | None = None) -> None:
    """Set the thresholds (and, given calib, the ACM budget: a recalibration) of `model` in place.
    ACM gates are calibrated with every exit closed and every router open, so that the same setting
    always gives the same model whatever setting came before."""
    own = parts(model)
    name = ffn_knob(model)
    if calib is not None and s.acm_budget is not None and name is not None:
        _set_thresholds(model, 1.0, 0.0)
        calibrate_budget_(model, calib, s.acm_budget)
        own.set_config(name, replace(own.config(name), budget=s.acm_budget))
    _set_thresholds(model, s.exit_threshold, s.skip_threshold)


def ffn_knob(model: nn.Module) -> str | None:
    """The installed transform whose adaptive FFNs take a budget (an ACM's, a MoE's; `acm_budget` in a
    Setting is theirs), or None."""
    own = parts(model)
    return next((n for n in own.names() if hasattr(own.config(n), "budget") and adaptive_ffns(model)), None)


def _set_thresholds(model: nn.Module, exit_threshold: float, skip_threshold: float) -> None:
    own = parts(model)
    if exit_heads(model):
        own.set_config("exits", replace(own.config("exits"), threshold=exit_threshold))
    if routers(model):
        own.set_config("skips", replace(own.config("skips"), threshold=skip_threshold))


def flops_and_quality(model: nn.Module, batches: list[dict], targets: list[torch.Tensor]) -> dict:
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
            targets = torch.cat([output(original, b) for b in calib])
        score = lambda out: float(quality(kind, out, targets).mean())  # noqa: E731
    use_exits = bool(exit_heads(model)) and "exits" in use
    skip_grid = _skip_grid(model, calib) if routers(model) and "skips" in use else (0.0,)
    acm_grid = ACM_GRID if ffn_knob(model) is not None and "acm" in use else (None,)
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
    own = parts(model)
    saved = own.config("skips")
    own.set_config("skips", replace(saved, threshold=0.0))
    try:
        with torch.no_grad():
            for b in calib:
                run(model, b, exits=False)
    finally:
        own.set_config("skips", saved)
        for hk in hooks:
            hk.remove()
    s = torch.cat(scores).float()
    qs = torch.quantile(s, torch.linspace(0.1, 0.9, 9)).tolist()
    return tuple(sorted({0.0, *[round(q, 6) for q in qs], 1.0}))


def best_within(rows: list[dict], budget: float) -> dict:
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
    best = best_within(rows, budget)
    apply_setting_(model, Setting(best["exit_threshold"], best["skip_threshold"], best["acm_budget"]), calib)
    return {"chosen": best, "sweep": rows}
