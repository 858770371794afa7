"""`acmize`: turn a pretrained transformer's FFNs into ACMs by distillation in the paper's 3 phases.

  1. representation distillation: every prefix of learners regresses its frozen FFN's output (MSE;
     without AcmConfig.exact_top the last prefix, all learners, is the top of the knob, weighted
     DistillConfig.top_weight; with it the top is the original FFN and is not trained);
     all modules train in parallel from hooks on the original model;
  2. gate pre-training: each gate learns the smallest k whose error is close to the next one's
     (err_k / err_{k+1} < ratio);
  3. end-to-end: hard gates (straight-through) and learners train to reproduce the original model's
     final output, each step at a budget drawn from the knob (DistillConfig.knob and the target) with
     its gate biases, and a budget loss pulling the average compute towards the drawn budget, so that
     one conversion serves every knob position (with DistillConfig.tune_backbone, the rest of the
     model, attention and norms, trains too);
then the budget knob (ACM.gate_bias) is calibrated so the average compute on calibration data meets
the target.
"""
from __future__ import annotations

import copy
import functools
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from edge.acm import ACM, AcmConfig, install_acms
from edge.adaptive import AdaptiveFFN, adaptive_ffns, refuse_adaptive
from edge.arch import Arch, arch_for
from edge.budget import KNOB, calibrate_budget_, ffn_knob
from edge.config import Config, boolean, config, integer, one_of, optional, real, sequence_of, setting
from edge.console import terminal
from edge.errors import EdgeError
from edge.forward import output
from edge.parts import parts
from edge.registry import Registry


@functools.cache
def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16, AMX), measured: a phase-1-sized
    product in bf16 takes under 0.6x its fp32 time (0.2x with AVX512-BF16; emulated bf16 is slower
    than fp32). Once per process, about 0.2 s."""
    a, w = torch.randn(2048, 384), torch.randn(1536, 384)

    def seconds(x, y):
        x @ y.T
        t = time.perf_counter()
        for _ in range(3):
            x @ y.T
        return time.perf_counter() - t

    return seconds(a.bfloat16(), w.bfloat16()) < 0.6 * seconds(a, w)


KNOB_REFRESH = 50  # phase-3 steps between calibrations of the knob's gate-bias table
KNOB_CALIB_BATCHES = 2  # on the first calibration batches


@dataclass(frozen=True)
class Precision:
    """The training passes' matrix products in `dtype` (None: fp32; the weights, the optimizer state and
    the losses stay fp32), and the default steps of phases 1 and 3 at it: what converting MiniLM affords
    in 15 minutes on 2 cores. e2e_alone_steps: the end-to-end phase's default in a conversion without
    phase 1 (moefy: its experts are the FFN's own neurons), which spends phase 1's time there too."""

    dtype: torch.dtype | None
    repr_steps: int
    e2e_steps: int
    e2e_alone_steps: int


PRECISIONS: Registry[Precision] = Registry("precision")
PRECISIONS.register("fp32")(Precision(None, 250, 200, 375))
# as good per step, in half the time where the CPU has it (bench/results/acm_phase1.txt): twice the steps.
# (Intel Xeon, 2 cores: a phase-1 step 0.93 s, an end-to-end step 1.0 s; moefy's routers and setup ~60 s)
PRECISIONS.register("bf16")(Precision(torch.bfloat16, 500, 400, 750))


def _autocast(cfg: "DistillConfig"):
    """The training passes' autocast; cfg is resolved (acmize and retarget resolve it once)."""
    dtype = PRECISIONS.get(cfg.precision).dtype
    return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@config("distill")
@dataclass(frozen=True)
class DistillConfig(Config):
    """How long and how hard each phase trains. Steps count batches; repr_steps and e2e_steps default
    (None) to the precision's (PRECISIONS)."""

    repr_steps: int | None = setting(optional(integer(0)), None)
    gate_steps: int = setting(integer(0), 80)
    e2e_steps: int | None = setting(optional(integer(0)), None)
    # phase 1 (bench/results/acm_phase1.txt: 3e-4 left the learners undertrained)
    lr: float = setting(real(0, low_open=True), 2e-3)
    gate_lr: float = setting(real(0, low_open=True), 1e-3)
    e2e_lr: float = setting(real(0, low_open=True), 1e-4)
    gate_ratio: float = setting(real(1, low_open=True), 1.2)
    budget_weight: float = setting(real(0, low_open=True), 4.0)
    hidden_weight: float = setting(real(0), 0.1)
    calib_iters: int = setting(integer(0), 30)
    seed: int = setting(integer(0), 0)
    # phase 3 also fine-tunes the rest of the model (attention, norms): +0.01 at budget 0.25, but then the
    # top of the knob is not the original model (bench/results/knob.txt)
    tune_backbone: bool = setting(boolean(), False)
    # phase 3 trains the whole knob: each step draws one of these budgets (and the target's), with its gate
    # biases from a table calibrated every KNOB_REFRESH steps; () trains for the target budget alone
    knob: tuple[float, ...] = setting(sequence_of(real(0, 1, low_open=True)), KNOB)
    # phase 1 without AcmConfig.exact_top: the weight of the last prefix (all learners: the top of the knob)
    # against each other prefix's;
    # 10 against 1: the top 0.994 against 0.988, 0.75 +0.005, 0.5 -0.002; 100 no better (bench/results/knob.txt)
    top_weight: float = setting(real(0), 10.0)
    # a PRECISIONS name, or "auto": bf16 where this CPU has it natively (bf16_is_fast)
    precision: str = setting(one_of("auto", *PRECISIONS.names()), "auto")

    def resolved(self, phase1: bool = True) -> "DistillConfig":
        """This config as it runs on this machine: precision "auto" and default steps made explicit.
        phase1=False: for a conversion without phase 1 (AdaptiveFFN.phase1), whose end-to-end phase
        takes that time too (Precision.e2e_alone_steps)."""
        name = self.precision if self.precision != "auto" else "bf16" if bf16_is_fast() else "fp32"
        p = PRECISIONS.get(name)
        e2e = p.e2e_steps if phase1 else p.e2e_alone_steps
        return replace(self, precision=name, repr_steps=p.repr_steps if self.repr_steps is None else self.repr_steps,
                       e2e_steps=e2e if self.e2e_steps is None else self.e2e_steps)



def start_conversion(model: nn.Module, data: list[dict], distill: DistillConfig, what: str, install,
                     phase1: bool = True):
    """The common start of acmize and moefy: refuse what cannot be converted, seed, and return
    (arch, resolved distill (phase1: DistillConfig.resolved), rng, frozen teacher, its FFNs, the student
    copy, the installed modules)."""
    parts(model).refuse_final(what)
    refuse_adaptive(model, what)
    if not data:
        raise EdgeError(f"{what} needs at least one batch of training data")
    arch = arch_for(model)
    distill = distill.resolved(phase1)
    torch.manual_seed(distill.seed)
    rng = random.Random(distill.seed)
    teacher = model.eval().requires_grad_(False)
    ffns = [arch.ffn(layer, teacher.config) for layer in arch.layers(teacher)]
    student = copy.deepcopy(teacher)
    return arch, distill, rng, teacher, ffns, student, install(student)


def acmize(model: nn.Module, config: AcmConfig, data: list[dict], calib: list[dict] | None = None,
           distill: DistillConfig = DistillConfig(), progress: bool = True) -> nn.Module:
    """Return an ACMized copy of `model`, distilled on `data` (a list of input batches).

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> acm = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=2),
    ...                   [batch], distill=edge.DistillConfig(repr_steps=2, gate_steps=2, e2e_steps=2),
    ...                   progress=False)
    >>> len(edge.acm_modules(acm))
    2
    """
    s = start_conversion(model, data, distill, "acmize", lambda m: install_acms(m, config))
    arch, distill, rng, teacher, ffns, student, acms = s
    slices = config.init == "slices"
    importance = _hidden_importance(teacher, arch, ffns, data[: max(1, min(4, len(data)))]) if slices else [None] * len(acms)
    for acm, ffn, imp in zip(acms, ffns, importance):  # the slices, and the top of the knob (exact_top)
        acm.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, imp, slices=slices)
    stream = _cycle(data, rng)
    _train_representations(teacher, arch, ffns, acms, stream, distill, progress)
    train_gates(teacher, arch, ffns, acms, stream, distill, progress, _gate_loss(distill))
    return _retarget_(student, teacher, config.budget, data, calib or data[:8], distill, progress)


def retarget(acm_model: nn.Module, model: nn.Module, budget: float, data: list[dict],
             calib: list[dict] | None = None, distill: DistillConfig = DistillConfig(),
             progress: bool = True) -> nn.Module:
    """Return a copy of an ACMized (or MoE) model moved to another budget: the end-to-end phase (against
    the original `model`) and calibration only, since the phases before it do not depend on the budget.

    >>> import edge
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> few = edge.DistillConfig(repr_steps=2, gate_steps=2, e2e_steps=2)
    >>> acm = edge.acmize(model, edge.AcmConfig(budget=0.9, learners=2), [batch], distill=few, progress=False)
    >>> edge.retarget(acm, model, 0.6, [batch], distill=few, progress=False).edge_parts.config('acm').budget
    0.6
    """
    AcmConfig(budget=budget)  # validates the budget
    parts(acm_model).refuse_final("retarget")
    if not data:
        raise EdgeError("retarget needs at least one batch of training data")
    student = copy.deepcopy(acm_model)
    phase1 = all(m.phase1 for m in adaptive_ffns(student))  # (the steps moefy / acmize at this budget take)
    return _retarget_(student, model.eval().requires_grad_(False), budget, data, calib or data[:8],
                      distill.resolved(phase1), progress)


def _retarget_(student, teacher, budget, data, calib, distill: DistillConfig, progress,
               desc: str = "phase 3/3 end-to-end") -> nn.Module:
    """Phase 3 and calibration of any adaptive model (ACMs, MoE layers). It starts from the seed and the
    top of the data whoever calls it, so that acmize at a budget is exactly phases 1-2 and then
    retarget to it (what bench/acm_fidelity.py measures per budget)."""
    modules, name = adaptive_ffns(student), ffn_knob(student)
    if not modules or name is None:
        raise EdgeError("this model has no adaptive FFNs; run edge.acmize or edge.moefy first")
    torch.manual_seed(distill.seed)
    stream = _cycle(data, random.Random(distill.seed))
    train_end_to_end(student, teacher, arch_for(teacher), modules, budget, stream, calib, distill, progress, desc)
    calibrate_budget_(student, calib, budget, distill.calib_iters)
    parts(student).set_config(name, replace(parts(student).config(name), budget=budget))
    return student.eval().requires_grad_(False)


# --- hooks on the original model ----------------------------------------------------------------
@contextmanager
def _capture(ffns):
    """Record each FFN's input and output (as (B, T, d) tensors) during a forward of the original."""
    store: list[list] = [[None, None] for _ in ffns]
    handles = []
    for i, f in enumerate(ffns):
        handles.append(f.fc1.register_forward_hook(lambda m, a, o, i=i: store[i].__setitem__(0, a[0])))
        handles.append(f.fc2.register_forward_hook(lambda m, a, o, i=i: store[i].__setitem__(1, o)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _layer_outputs(layers):
    """Collect each layer's output hidden states (B, T, d) during a forward."""
    store: list[torch.Tensor] = []
    hook = lambda m, a, o: store.append(o[0] if isinstance(o, tuple) else o)  # noqa: E731
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _ffn_pairs(teacher, arch: Arch, ffns, batch):
    """[(x, y)] per FFN over the batch's real tokens: x (M, d) inputs, y (M, d) outputs."""
    with torch.no_grad(), _capture(ffns) as store:
        output(teacher, batch)
    pairs = []
    for x, y in store:
        mask = arch.token_mask(batch, x.shape)
        pairs.append((x[mask].float(), y[mask].float()))
    return pairs


def _hidden_importance(teacher, arch, ffns, batches) -> list[torch.Tensor]:
    """Per hidden unit: mean |activation| times the norm of its output weights (slice ordering)."""
    sums = [torch.zeros(f.fc1.out_features) for f in ffns]
    for b in batches:
        for s, f, (x, _) in zip(sums, ffns, _ffn_pairs(teacher, arch, ffns, b)):
            act = _act_fn(f.act)(F.linear(x, f.fc1.weight, f.fc1.bias))
            s += act.abs().mean(0)
    return [s * f.fc2.weight.norm(dim=0) for s, f in zip(sums, ffns)]


def _act_fn(name):
    from edge.acm import ACTIVATIONS

    return ACTIVATIONS.get(name)()


def _cycle(data, rng):
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in order:
            yield data[i]


def prefix_errors(acm: ACM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, N+1) squared error of each prefix k = 0..N of learners against the FFN output y."""
    prefix = acm.prefix_outputs(x).float()  # (M, N, d), fp32 under autocast too
    err = (prefix - y.unsqueeze(-2)).pow(2).mean(-1)  # (M, N)
    return torch.cat([y.pow(2).mean(-1, keepdim=True), err], -1)


def _train_representations(teacher, arch, ffns, acms, stream, cfg: DistillConfig, progress):
    if not cfg.repr_steps or not any(a.m for a in acms):
        return
    params = [p for a in acms for p in (a.w1, a.b1, a.w2, a.b2)]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.repr_steps)
    bar = tqdm(range(cfg.repr_steps), desc="phase 1/3 learners", disable=not progress, file=terminal())
    for _ in bar:
        with _autocast(cfg):
            pairs = _ffn_pairs(teacher, arch, ffns, next(stream))
            # every prefix k = 1..N regresses the original output, normalized by its variance (exact_top:
            # k = N is the original FFN, nothing to train)
            loss = sum(_prefix_loss(prefix_errors(a, x, y), 0.0 if a.exact_top else cfg.top_weight) / y.var()
                       for a, (x, y) in zip(acms, pairs) if a.m) / len(acms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(nmse=f"{loss.item():.4f}")


def _prefix_loss(errors: torch.Tensor, top_weight: float) -> torch.Tensor:
    """Phase 1's loss of one module from its prefix errors (M, N+1): the mean over k = 1..N, the last
    prefix (every learner: the top of the knob) weighted `top_weight` against each other one."""
    w = torch.ones(errors.shape[-1] - 1)
    w[-1] = top_weight
    return (errors[:, 1:] * w).sum(-1).mean() / w.sum()


def gate_labels(errors: torch.Tensor, ratio: float) -> torch.Tensor:
    """Smallest k with err_k / err_{k+1} < ratio (the next learner no longer helps much), else N."""
    close = errors[:, :-1] < ratio * errors[:, 1:]  # (M, N): is k good enough?
    close = torch.cat([close, torch.ones_like(close[:, :1])], -1)  # k = N always qualifies
    return close.float().argmax(-1)  # first True


def train_gates(teacher, arch, ffns, modules: list[AdaptiveFFN], stream, cfg: DistillConfig, progress, loss_of,
                desc: str = "phase 2/3 gates"):
    """The gates (AdaptiveFFN.trained()[1]) alone learn, cfg.gate_steps steps, from each FFN's inputs x
    and outputs y of the original model: loss_of(module, x, y), averaged over the modules."""
    if not cfg.gate_steps:
        return
    opt = torch.optim.Adam([p for a in modules for p in a.trained()[1]], lr=cfg.gate_lr)
    bar = tqdm(range(cfg.gate_steps), desc=desc, disable=not progress, file=terminal())
    for _ in bar:
        with _autocast(cfg):
            pairs = _ffn_pairs(teacher, arch, ffns, next(stream))
            loss = sum(loss_of(a, x, y) for a, (x, y) in zip(modules, pairs)) / len(modules)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def _gate_loss(cfg: DistillConfig):
    """Phase 2's loss of an ACM's gate (GATE_LOSSES, by its kind) against its prefixes' errors."""
    def loss(a: ACM, x, y):
        with torch.no_grad():
            err = prefix_errors(a, x, y)
        return GATE_LOSSES[a.gate_kind](a.gate(x).float(), err, y, cfg)

    return loss


# phase 2 objective per gate kind (edge.acm.GATE_SCORES says how the outputs are read)
GATE_LOSSES = {
    # regress the log of each prefix's error, normalized by the module's output variance so that one
    # price per learner (the gate bias) means the same in every layer
    "error": lambda raw, err, y, cfg: F.mse_loss(raw, (err / y.var() + 1e-6).log()),
    # the paper's labels, as classes
    "ratio": lambda raw, err, y, cfg: F.cross_entropy(raw, gate_labels(err, cfg.gate_ratio)),
}


def expected_fraction(modules: list[AdaptiveFFN], token_mask: torch.Tensor) -> torch.Tensor:
    """Differentiable average compute of adaptive FFNs (fraction of original FFN FLOPs) on real tokens,
    from their last dense forward."""
    num, den = 0.0, 0.0
    for a in modules:
        num = num + a.gate_flops() + a.unit_flops() * a.expected_units()[token_mask].mean()
        den += a.ffn_flops()
    return num / den


def train_end_to_end(student, teacher, arch, acms: list[AdaptiveFFN], budget, stream, calib, cfg: DistillConfig,
                     progress, desc: str = "phase 3/3 end-to-end"):
    """Phase 3 of any adaptive FFN (ACMs here, sigma-MoE layers in edge.moe). Each step draws a budget
    of the knob (cfg.knob and the target) and sets the gate biases to that budget's (a table calibrated
    on the first calibration batches every KNOB_REFRESH steps), so that one model serves every knob
    position; the budget loss pulls towards the drawn budget; the modules' own regularizers
    (AdaptiveFFN.aux_loss) come on top."""
    if not cfg.e2e_steps:
        return
    levels = sorted({budget, *cfg.knob}, reverse=True)
    if all(a.exact_at_top() for a in acms) and not cfg.tune_backbone:  # at 1.0 every token runs the original FFN:
        levels = [b for b in levels if b < 1.0] or levels       # nothing trains there
    draw = random.Random(cfg.seed)
    for a in acms:
        a.dense = True
    student.eval()  # no dropout: the student must match the teacher's deterministic outputs
    learners = [p for a in acms for p in a.trained()[0]]
    gates = [p for a in acms for p in a.trained()[1]]
    own = {id(p) for a in acms for p in a.parameters()}  # (an ACM's top, the original FFN, stays so)
    backbone = [p for p in student.parameters() if id(p) not in own] if cfg.tune_backbone else []
    student.requires_grad_(False)
    for p in learners + gates + backbone:
        p.requires_grad_(True)
    # pretrained-scale learners move little (fine-tuning rates); the gates are small and new
    opt = torch.optim.Adam([{"params": learners + backbone, "lr": cfg.e2e_lr}, {"params": gates, "lr": cfg.gate_lr}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.e2e_steps)
    bar = tqdm(range(cfg.e2e_steps), desc=desc, disable=not progress, file=terminal())
    try:
        for step in bar:
            if step % KNOB_REFRESH == 0:
                table = {b: calibrate_budget_(student, calib[:KNOB_CALIB_BATCHES], b, cfg.calib_iters) for b in levels}
            drawn = draw.choice(levels)
            for a, value in zip(acms, table[drawn]):
                a.set_knob_(value)
            batch = next(stream)
            with _autocast(cfg), torch.no_grad(), _layer_outputs(arch.layers(teacher)) as t_hidden:
                target = output(teacher, batch).float()
            with _autocast(cfg), _layer_outputs(arch.layers(student)) as s_hidden:
                out = output(student, batch).float()
            t_hidden, s_hidden = [t.float() for t in t_hidden], [s.float() for s in s_hidden]
            mask = arch.token_mask(batch, acms[0].last_k.shape)
            distil = (1 - F.cosine_similarity(out, target, dim=-1)).mean()
            # every layer's output too: a denser signal than the final output alone
            hidden = sum(((s - t)[mask].pow(2).mean() / t[mask].var()) for s, t in zip(s_hidden, t_hidden))
            frac = expected_fraction(acms, mask)
            loss = distil + cfg.hidden_weight * hidden / len(acms) + sum(a.aux_loss() for a in acms) / len(acms)
            if drawn < 1.0:  # (at 1.0 every learner runs whatever the gates say)
                loss = loss + cfg.budget_weight * (frac - drawn) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(cos=f"{1 - distil.item():.4f}", frac=f"{frac.item():.3f}")
    finally:
        for a in acms:
            a.end_training()
