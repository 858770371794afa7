"""The runtime registry: one entry per target runtime, each defined in export/<runtime>.py, which is
the only place that imports that runtime (lazily, inside its functions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from edge.registry import Registry


@dataclass(frozen=True)
class Runtime:
    """name: what `--to` says; suffix: the artifact file's; lower(ep, path): write the program of an
    ExportedProgram to path; load(path, threads=None) -> run, where run(list of np arrays) -> list of np arrays;
    stats(path) -> {"branches": conditional jumps / If nodes, "gathers": NonZero ops, "delegates":
    calls into a backend delegate (ExecuTorch) or 0} - what the program keeps, for tests and benchmarks."""

    name: str
    suffix: str
    lower: Callable[[torch.export.ExportedProgram, str], None]
    load: Callable[..., Callable[[list[np.ndarray]], list[np.ndarray]]]
    stats: Callable[[str], dict]


RUNTIMES: Registry[Runtime] = Registry("runtime")
