"""What an ACMized model keeps and what it costs: cosine to the original output, downstream
accuracy through a linear probe fitted on the ORIGINAL model's outputs, and achieved compute."""
from __future__ import annotations

import hashlib
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.adaptive import adaptive_ffns
from edge.errors import EdgeError
from edge.arch import arch_for
from edge.budget import KNOB, calibrate_budget_
from edge.flops import BudgetMeter, count_flops
from edge.forward import output


def outputs(model: nn.Module, batches: list[dict]) -> tuple[torch.Tensor, BudgetMeter | None]:
    """Final outputs (N, D) over `batches`, and the choices of its adaptive FFNs (ACMs, MoE layers), if any."""
    arch = arch_for(model)
    acms = adaptive_ffns(model)
    meter = BudgetMeter(acms) if acms else None
    outs = []
    with torch.no_grad():
        for b in batches:
            outs.append(output(model, b))
            if meter:
                meter.update(arch.token_mask(b, acms[0].last_k.shape))
    return torch.cat(outs), meter


class LinearProbe:
    """Multinomial logistic regression (L2-regularized, LBFGS) on fixed features."""

    def __init__(self, l2: float = 1e-4):
        self.l2 = l2

    def fit(self, x: torch.Tensor, y: torch.Tensor, classes: int | None = None) -> "LinearProbe":
        """Fit on features x (N, d) and labels y (N,) in 0..classes-1 (default: up to the largest seen)."""
        torch.manual_seed(0)
        self.mean = x.mean(0)
        self.std = x.std(0) + 1e-6
        x = (x - self.mean) / self.std
        n_cls = classes or int(y.max()) + 1
        self.lin = nn.Linear(x.shape[1], n_cls)
        opt = torch.optim.LBFGS(self.lin.parameters(), lr=1, max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self.lin(x), y) + self.l2 * self.lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.lin((x - self.mean) / self.std).argmax(-1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y).float().mean())

    def as_linear(self) -> nn.Linear:
        """The probe as one nn.Linear on the raw features (the standardization folded in), e.g. for
        edge.add_head."""
        lin = nn.Linear(*self.lin.weight.shape[::-1])
        with torch.no_grad():
            w = self.lin.weight / self.std  # (C, d)
            lin.weight.copy_(w)
            lin.bias.copy_(self.lin.bias - w @ self.mean)
        return lin

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.lin.weight.data, "bias": self.lin.bias.data}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "LinearProbe":
        probe = cls()
        probe.mean, probe.std = t["mean"], t["std"]
        probe.lin = nn.Linear(*t["weight"].shape[::-1])
        probe.lin.weight.data, probe.lin.bias.data = t["weight"], t["bias"]
        return probe


PROBE_CACHE = 1  # the cache's format: bump it when a probe would come out differently


def teacher_probe(teacher: nn.Module, tokenizer, passages, batch_size: int = 64) -> LinearProbe:
    """The linear probe fitted on the ORIGINAL model's outputs of the probe split of `passages`.

    Fitting it runs the model over every probe passage (MiniLM on the novels: 2,688 passages, the
    better part of a minute on one core), so it is kept in the data directory under a hash of all it
    depends on (the model's weights and config, the probe batches' tokens, the labels) and computed
    again only when one of them changes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from edge.data import batches
    from edge.files import data_dir
    from edge.files import write_atomic

    p = passages.split("probe")
    probe_b, y = batches(tokenizer, p.texts, batch_size), torch.tensor(p.labels)
    h = hashlib.sha256(json.dumps([PROBE_CACHE, arch_for(teacher).name, LinearProbe().l2]).encode())
    config = getattr(teacher, "config", None)
    h.update(config.to_json_string().encode() if hasattr(config, "to_json_string") else b"")
    for name, t in [*sorted(teacher.state_dict().items()), *((k, t) for b in probe_b for k, t in sorted(b.items())),
                    ("labels", y)]:
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = data_dir() / "probes" / f"{h.hexdigest()[:32]}.safetensors"
    try:
        return LinearProbe.from_tensors(load_file(path))
    except (OSError, SafetensorError, KeyError):  # absent or unreadable: fit it (again)
        probe = LinearProbe().fit(outputs(teacher, probe_b)[0], y)
        write_atomic(path, lambda tmp: save_file(probe.tensors(), tmp))
        return probe


def ffn_share_of_model(model: nn.Module, batch: dict) -> float:
    """Share of the ORIGINAL model's FLOPs (counted by torch on `batch`) that its FFNs take."""
    arch = arch_for(model)
    ffns = [arch.ffn(layer, model.config) for layer in arch.layers(model)]
    seen = []  # positions each FFN processes (padding included, as torch counts it)
    hook = ffns[0].fc1.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[:-1].numel()))
    try:
        total = count_flops(arch.output, model, batch)
    finally:
        hook.remove()
    return sum(4 * f.fc1.in_features * f.fc1.out_features for f in ffns) * seen[0] / total


def compare(student: nn.Module, teacher_out: torch.Tensor, batches: list[dict], ffn_share: float | None = None,
            ) -> tuple[dict, torch.Tensor]:
    """(report, the student's outputs): the cosine of the student's outputs to the teacher's, and the
    student's achieved compute."""
    out, meter = outputs(student, batches)
    cos = F.cosine_similarity(out, teacher_out, dim=-1)
    report = {"cos_mean": float(cos.mean()), "cos_p5": float(torch.quantile(cos, 0.05)), "n": len(cos)}
    if meter is not None:
        report.update(meter.report(ffn_share))
    return report, out


def knob_curve(student: nn.Module, teacher_out: torch.Tensor, batches: list[dict], calib: list[dict],
               budgets=None, ffn_share: float | None = None, score=None) -> list[dict]:
    """The whole knob of one ACMized model: set to each budget (default edge.budget.KNOB) with the knob
    alone (calibrate_budget_ on `calib`), compared on `batches` with the teacher's outputs; its gate
    biases are given back afterwards.
    [{budget, achieved (of the FFN FLOPs), cos_mean, cos_p5[, model_fraction][, acc: score(outputs)]}]."""
    acms = adaptive_ffns(student)
    saved = [a.knob_value() for a in acms]
    rows = []
    try:
        for budget in KNOB if budgets is None else budgets:
            calibrate_budget_(student, calib, budget)
            rep, out = compare(student, teacher_out, batches, ffn_share)
            row = {"budget": budget, "achieved": rep["ffn_fraction"], "cos_mean": rep["cos_mean"],
                   "cos_p5": rep["cos_p5"]}
            if "model_fraction" in rep:
                row["model_fraction"] = rep["model_fraction"]
            if score is not None:
                row["acc"] = score(out)
            rows.append(row)
    finally:
        for a, value in zip(acms, saved):
            a.set_knob_(value)
    return rows


def evaluate(student: nn.Module, teacher: nn.Module, tokenizer, passages, limit: int | None = None,
             batch_size: int = 64, knob=None, calib_limit: int = 512) -> dict:
    """Held-out report: cosine to the original outputs and achieved compute on the test split, and,
    for labelled passages, the accuracy of a linear probe fitted on the ORIGINAL model's outputs of
    the probe split, applied unchanged to both models. A model with ACMs also gets "knob", its whole
    knob curve (knob_curve at the budgets `knob`, default edge.budget.KNOB; () for none), the knob set
    on the first `calib_limit` calibration passages.

    >>> import edge
    >>> model, tok = edge.load_pretrained()
    >>> # evaluate(acm_model, model, tok, edge.austen_passages())
    """
    from edge.data import batches

    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise EdgeError(f"the evaluation limit must be an integer >= 1 (or None: the whole test split), got {limit!r}")
    test = passages.split("test")
    if limit:
        test = test.head(limit)
    test_b = batches(tokenizer, test.texts, batch_size)
    teacher_out, _ = outputs(teacher, test_b)
    report, student_out = compare(student, teacher_out, test_b, ffn_share_of_model(teacher, test_b[0]))
    if passages.labels is not None:
        probe = teacher_probe(teacher, tokenizer, passages, batch_size)
        y = torch.tensor(test.labels)
        report["acc_teacher"] = probe.accuracy(teacher_out, y)
        report["acc"] = probe.accuracy(student_out, y)
        report["probe"] = probe
    if adaptive_ffns(student) and knob != ():
        calib = batches(tokenizer, passages.split("calib").texts[:calib_limit], batch_size)
        score = (lambda out: probe.accuracy(out, y)) if passages.labels is not None else None
        report["knob"] = knob_curve(student, teacher_out, test_b, calib, knob, report.get("ffn_share_of_model"),
                                    score)
    return report
