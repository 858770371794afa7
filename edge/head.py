"""A task head on an embedding model: the model then outputs a classifier's logits.

An embedding model (MiniLM) answers a task through a head on its embedding, e.g. a linear probe.
`add_head` makes that head part of the model, so that everything downstream sees a classifier: its
exits are classifier exits with softmax confidence (trained on the task's labels, see
edge.add_exits), budgets are set on top-1 agreement, the export carries the head and the plan says
"logits". The backbone and the embedding it computes are unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from edge.arch import arch_for, task_head
from edge.config import Config, config, integer, sequence_of, setting, text
from edge.exits import exit_heads
from edge.errors import EdgeError
from edge.parts import Transform, attach, parts, register


@config("head")
@dataclass(frozen=True)
class HeadConfig(Config):
    """A linear head to `classes` classes, optionally named by `labels`."""

    classes: int = setting(integer(2))
    labels: tuple[str, ...] = setting(sequence_of(text()), ())

    def check(self):
        if self.labels and len(self.labels) != self.classes:
            raise EdgeError(f"HeadConfig.labels must be {self.classes} class names (one per class) or empty, "
                            f"got {list(self.labels)!r}")


class TaskHead(nn.Module):
    """Embedding (B, D) -> logits (B, classes)."""

    def __init__(self, d: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(d, classes)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y)

    def flops(self) -> int:
        return 2 * self.linear.in_features * self.linear.out_features


def _require_embedding(model: nn.Module):
    """The model's adapter, if the model outputs an embedding (a task head goes on nothing else)."""
    arch = arch_for(model)
    if arch.output_kind(model) != "embedding":  # (a task head already there makes it "logits" too)
        raise EdgeError("this model already outputs logits; a task head goes on an embedding model")
    return arch


def install_head(model: nn.Module, config: HeadConfig) -> None:
    """Attach an untrained task head (in place); used by add_head and by edge.load."""
    arch = _require_embedding(model)
    attach(model).add("head", config, TaskHead(arch.output_dim(model), config.classes))


def add_head(model: nn.Module, linear: nn.Linear, labels: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """Return a copy of embedding model `model` whose output is `linear` applied to its embedding: a
    classifier. Add it before the exits (they are then trained as this classifier's exits).

    >>> import edge, torch
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> m = edge.add_head(model, torch.nn.Linear(32, 3))
    >>> edge.arch_for(m).output(m, batch).shape
    torch.Size([2, 3])
    """
    parts(model).refuse_final("add_head")
    if not isinstance(linear, nn.Linear):
        raise EdgeError(f"add_head takes a torch.nn.Linear (e.g. LinearProbe.as_linear()), got {type(linear).__name__}")
    if exit_heads(model):
        raise EdgeError("add the task head before the exits: exits are trained for the output they stand in for")
    arch = _require_embedding(model)
    if linear.in_features != arch.output_dim(model):
        raise EdgeError(f"the head takes {linear.in_features} features but the model's embedding has "
                        f"{arch.output_dim(model)}")
    out = copy.deepcopy(model)
    install_head(out, HeadConfig(linear.out_features, tuple(labels)))
    with torch.no_grad():
        parts(out).module("head").linear.weight.copy_(linear.weight)
        parts(out).module("head").linear.bias.copy_(linear.bias)
    return out.eval().requires_grad_(False)


def head_of(model: nn.Module) -> tuple[nn.Linear, tuple[str, ...]] | None:
    """`model`'s task head (its linear layer and class names, as add_head takes them), or None."""
    head = task_head(model)
    return None if head is None else (head.linear, parts(model).config("head").labels)


register(Transform("head", HeadConfig, install_head))
