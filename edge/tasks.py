"""edge's from-scratch training jobs, by name: the registry edge.vcycle.TASKS filled by importing the
modules that define them (edge.vision: fashion-vit; edge.mlm: austen-mlm)."""
from __future__ import annotations

from edge import mlm, vision  # noqa: F401  (each registers its task on import)
from edge.vcycle import TASKS, Task


def task(name: str) -> Task:
    """The registered training task `name`."""
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()
