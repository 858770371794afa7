"""The V-cycle trainer of multi-level training (arXiv 2404.07999) for edge's from-scratch training jobs.

A run of L levels has 2L - 1 phases: train level 0 (the model itself), coalesce to level 1, ... train
the smallest level, then de-coalesce + interpolate back up level by level, training each, and end on
the model itself. levels=1 is plain training: the baseline the V-cycle is measured against runs
through the same loop, on the same batch stream, seeds and optimizer.

    from edge.tasks import task
    from edge.vcycle import VCycleConfig, train
    run = train(task("fashion-vit"), VCycleConfig(levels=2), total_steps=2345)
    run.model, run.history  # the trained model; (phase, level, step, train_seconds, metric) rows
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edge.config import Config, config, integer, real, sequence_of, setting
from edge.console import terminal
from edge.errors import EdgeError, check_interrupt
from edge.multilevel import coalesce, interpolate_
from edge.registry import Registry

TASKS: Registry["Task"] = Registry("training task")


class Task:
    """A from-scratch training job: a fresh model, an endless seeded batch stream, a loss, a metric."""

    name = ""
    metric = ""  # what evaluate returns ("accuracy", "mlm_loss")
    higher_is_better = True
    lr = 1e-3  # level 0's peak learning rate (VCycleConfig.lr_scale multiplies it per level)
    weight_decay = 0.01
    steps_per_epoch = 1

    def model(self, seed: int) -> nn.Module:
        raise NotImplementedError

    def stream(self, seed: int) -> Iterator[dict]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> float:
        raise NotImplementedError

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model (a Hugging Face model directory, safetensors)."""
        model.save_pretrained(str(directory), safe_serialization=True)


@config("vcycle")
@dataclass(frozen=True)
class VCycleConfig(Config):
    """levels: 1 = plain training; width/depth: the factors of each coalescing (hidden size, heads and FFN
    width / layers); alpha: the interpolation weight of the de-coalesced smaller model; steps: each of the
    2 levels - 1 phases' steps as a fraction of total_steps (default, for 2 levels: 0.03 of the model
    itself, 0.8 of the smaller one, 0.6 of the model itself again: more steps than total_steps, fewer
    seconds, measured on both tasks by bench/multilevel.py; more levels: 0.03 on each level down, 0.8 at
    the smallest, 0.3 on each level up but the last, 0.6 on it, not measured); lr_scale: each level's peak
    learning rate as a multiple of the task's (default 1 for the model itself, 1.5 for each smaller level);
    warmup: each phase's share of warm-up steps; floor: the learning rate a phase before the last anneals
    to, as a fraction of its peak (the last anneals to ~0)."""

    levels: int = setting(integer(1, 4), 2)
    width: int = setting(integer(1), 2)
    depth: int = setting(integer(1), 2)
    alpha: float = setting(real(0, 1), 0.5)
    steps: tuple = setting(sequence_of(real(0, 10, low_open=True)), ())
    lr_scale: tuple = setting(sequence_of(real(0, 100, low_open=True)), ())
    warmup: float = setting(real(0, 1, high_open=True), 0.1)
    floor: float = setting(real(0, 1), 0.3)

    def check(self) -> None:
        if self.steps and len(self.steps) != self.phases:
            raise EdgeError(f"VCycleConfig.steps must hold {self.phases} fractions (2 levels - 1 phases), "
                            f"got {len(self.steps)}")
        if self.lr_scale and len(self.lr_scale) != self.levels:
            raise EdgeError(f"VCycleConfig.lr_scale must hold {self.levels} values (one per level), "
                            f"got {len(self.lr_scale)}")

    @property
    def phases(self) -> int:
        return 2 * self.levels - 1

    def level(self, phase: int) -> int:
        return phase if phase < self.levels else self.phases - 1 - phase

    def fractions(self) -> tuple[float, ...]:
        if self.steps:
            return self.steps
        if self.levels == 1:
            return (1.0,)
        return (*[0.03] * (self.levels - 1), 0.8, *[0.3] * (self.levels - 2), 0.6)

    def scale(self, level: int) -> float:
        if self.lr_scale:
            return self.lr_scale[level]
        return 1.0 if level == 0 else 1.5


@dataclass
class Run:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # {phase, level, step, seconds, metric}
    seconds: float = 0.0  # training wall-clock, evaluations excluded


def first_reaching(history: list[dict], target: float, higher_is_better: bool) -> float | None:
    """The training seconds at a run's first evaluation (a Run.history row) as good as target, or None."""
    for row in history:
        m = row["metric"]
        if m is not None and (m >= target if higher_is_better else m <= target):
            return row["seconds"]
    return None


def _schedule(opt, peak: float, steps: int, warmup: float, floor: float, last: bool):
    """One phase's one-cycle schedule: from peak/25 up to peak over `warmup` of the steps, cosine down to
    peak * floor (a phase before the last) or to ~0 (the last: OneCycleLR's own end, peak / 2.5e5)."""
    final_div = 1e4 if last else 1 / (25 * max(floor, 1e-6))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=max(steps, 1), pct_start=warmup,
                                               final_div_factor=final_div)


def _save_phase(state_dir: Path, phase: int, model: nn.Module, meta: dict) -> None:
    from safetensors.torch import save_model

    from edge.files import atomic_dir

    with atomic_dir(state_dir / f"phase-{phase}", overwrite=True) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")


def _load_phase(state_dir: Path, phase: int, model: nn.Module) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    d = state_dir / f"phase-{phase}"
    try:
        meta = json.loads((d / "state.json").read_text(encoding="utf-8"))
        load_model(model, str(d / "model.safetensors"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise EdgeError(f"cannot resume from {d}: {e}; remove it to train that phase again") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("seconds"), (int, float))
            and isinstance(meta.get("history"), list)):
        raise EdgeError(f"cannot resume from {d}: its state.json is not a phase's state; remove it")
    return meta


def _completed(state_dir: Path, signature: dict, phases: int) -> int:
    """How many phases a state directory holds for this very run (same task, config, seed, steps)."""
    done = 0
    for j in range(phases):
        f = state_dir / f"phase-{j}" / "state.json"
        if not f.is_file():
            break
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise EdgeError(f"cannot resume from {f.parent}: its state.json is unreadable; remove it") from None
        if not isinstance(meta, dict) or meta.get("run") != signature:
            raise EdgeError(f"{state_dir} holds another run's phases ({f.parent.name}: a different task, config, "
                            "seed or step count); choose another state directory")
        done = j + 1
    return done


def train(job: Task, cfg: VCycleConfig = VCycleConfig(), total_steps: int | None = None, seed: int = 0,
          state_dir: str | Path | None = None, evaluate_every: int = 0, progress: bool = True) -> Run:
    """Train `job`'s model from scratch through the V-cycle of `cfg` (levels=1: plain training) for
    about `total_steps` steps in all (default: 5 epochs), saving each finished phase to `state_dir`
    (and resuming from the phases already there). evaluate_every > 0 also evaluates the model as it was
    every that many steps of the last phase (copies of its weights, evaluated after the phase: the clock
    counts training only); the end is always evaluated."""
    if total_steps is None:
        total_steps = 5 * job.steps_per_epoch
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise EdgeError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(evaluate_every, bool) or not isinstance(evaluate_every, int) or evaluate_every < 0:
        raise EdgeError(f"evaluate_every must be an integer >= 0, got {evaluate_every!r}")
    torch.manual_seed(seed)
    top = job.model(seed)
    probe = top
    for _ in range(cfg.levels - 1):  # every level's sizes checked before any training
        probe = coalesce(probe, cfg.width, cfg.depth)
    steps = [max(1, round(f * total_steps)) for f in cfg.fractions()]
    signature = {"task": job.name, "config": cfg.to_dict(), "seed": seed, "total_steps": total_steps}
    state = Path(state_dir) if state_dir is not None else None
    done = _completed(state, signature, cfg.phases) if state is not None and state.is_dir() else 0

    run = Run(top)
    stream = job.stream(seed)
    down: list[nn.Module] = []  # each level's model at the end of its phase on the way down
    snapshots: list[tuple[int, float, dict]] = []  # (step, seconds, weights) of the last phase, to evaluate
    model = top
    step_total = 0
    for phase in range(cfg.phases):
        level, last = cfg.level(phase), phase == cfg.phases - 1
        # the model this phase trains
        if phase == 0:
            model = top
        else:  # (the operators' time counts: they are part of the V-cycle's cost)
            t0 = time.perf_counter()
            if phase < cfg.levels:
                down.append(model)
                model = coalesce(model, cfg.width, cfg.depth)
            else:
                model = interpolate_(down.pop(), model, cfg.alpha, cfg.width, cfg.depth)
            run.seconds += time.perf_counter() - t0
        if phase < done:  # resumed: this phase's result is on disk
            meta = _load_phase(state, phase, model)
            run.seconds, run.history = float(meta["seconds"]), list(meta["history"])
            for _ in range(steps[phase]):
                next(stream)
            step_total += steps[phase]
            continue
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=job.lr * cfg.scale(level), weight_decay=job.weight_decay)
        sched = _schedule(opt, job.lr * cfg.scale(level), steps[phase], cfg.warmup, cfg.floor, last)
        desc = f"{job.name}: phase {phase + 1}/{cfg.phases} (level {level})"
        bar = tqdm(total=steps[phase], desc=desc, disable=not progress, file=terminal())
        t0 = time.perf_counter()
        for i in range(steps[phase]):
            loss = job.loss(model, next(stream))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            step_total += 1
            if last and evaluate_every and (i + 1) % evaluate_every == 0 and i + 1 < steps[phase]:
                # a copy of the weights now, evaluated after the phase: evaluating here would stop the
                # clock but not its cost (the ViT's last-phase steps took 0.125 s with one every 50 steps, 0.09 s
                # with one every 100, 0.11 s in the plain run without any)
                run.seconds += time.perf_counter() - t0
                snapshots.append((step_total, run.seconds, {k: v.detach().clone() for k, v in model.state_dict().items()}))
                t0 = time.perf_counter()
            check_interrupt()
        run.seconds += time.perf_counter() - t0
        bar.close()
        if last:
            final = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for at, seconds, weights in [*snapshots, (step_total, run.seconds, final)]:
                model.load_state_dict(weights)
                run.history.append({"phase": phase, "level": level, "step": at, "seconds": seconds,
                                    "metric": _evaluate(job, model)})
            snapshots.clear()
        if state is not None:
            _save_phase(state, phase, model, {"run": signature, "phase": phase, "seconds": run.seconds,
                                              "history": run.history})
    run.model = model.eval().requires_grad_(False)
    return run


def _evaluate(job: Task, model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return float(job.evaluate(model))


def epochs_steps(job: Task, epochs: float) -> int:
    return max(1, math.ceil(epochs * job.steps_per_epoch))
