"""Training the adaptive-depth parts: exit heads (`add_exits`: only the heads train) and MindSkip
routers (`add_skips`: router-tuning, only the routers train). The parts themselves: edge.exits,
edge.skips; the forward: edge.forward."""
from __future__ import annotations

import copy
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from edge.arch import arch_for
from edge.console import terminal
from edge.errors import EdgeError
from edge.evaluate import LinearProbe
from edge.exits import ExitConfig, ExitHead, exit_heads, install_exits
from edge.forward import distil_loss, output, run
from edge.parts import parts
from edge.skips import SkipConfig, install_skips, routers


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
    parts(model).refuse_final("add_exits")
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
            err = distil_loss(kind, y, target)
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
    parts(model).refuse_final("add_skips")
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
                target = output(teacher, b)
            scores = []
            hooks = [r.register_forward_hook(lambda m, a, o: scores.append(o)) for r in routers(student).values()]
            try:
                out, _ = run(student, b, soft=True)
            finally:
                for hk in hooks:
                    hk.remove()
            kept = torch.cat(scores).mean()
            loss = distil_loss(kind, out, target).mean() + config.capacity_weight * (kept - keep_target) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = out.shape[0]
            seen += n
            bar.update(n)
            bar.set_postfix(loss=f"{loss.item():.4f}", kept=f"{kept.item():.2f}")
    bar.close()
    return student.requires_grad_(False)
