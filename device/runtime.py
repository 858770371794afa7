"""The runtime registry of the device side: one entry per runtime (how an artifact's methods are
loaded, profiled and inspected), each defined in device/<runtime>.py, which imports that runtime
lazily, inside its functions. How a model is lowered FOR a runtime is the export side's
(export.runtime.LOWERINGS): a board that only runs artifacts needs numpy and the runtime, not torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.errors import EdgeError
from edge.registry import Registry

Run = Callable[[list[np.ndarray]], list[np.ndarray]]
MODES = ("graph", "routed")  # the in-graph mode and the routed one (export.lower, export.routed, device.driver)


@dataclass(frozen=True)
class Runtime:
    """A program is one or more named methods (the in-graph mode has one, "forward"; the routed mode
    one per segment and per adaptive FFN: its learners or experts).
    name: what `--to` says;
    mode: "graph" or "routed", the default (measured: bench/results/export_speed.txt);
    load(directory, {method: file}, threads=None, device="cpu") -> {method: run}, run(list of np arrays)
      -> list; device: "cpu" or "cuda" (a runtime without it raises: never a silent CPU fallback);
    profile(directory, {method: file}, threads=None, device="cpu") -> ({method: run}, OpProfile): load with the
      runtime's own per-operator profiler on (see OpProfile);
    stats(directory, {method: file}) -> {"branches": conditional jumps / If nodes, "gathers": NonZero
      ops, "delegates": calls into a backend delegate (0 without one), "kernels": operators run
      outside a delegate (ExecuTorch, LiteRT; 0 for ONNX)}: what the program keeps, for tests and benchmarks;
    modes: the export modes it takes;
    dynamic_tokens: a sequence model's token count stays a dynamic size (else the example's, fixed);
    spare_rows: its backend takes no empty tensor, so in the in-graph mode each ACM learner gathers one
      spare row besides its tokens (never 0 rows: edge.acm.ACM.gathered)."""

    name: str
    package: str  # the PyPI distribution of the runtime (its version goes into profiles)
    mode: str  # the export mode it gets by default: the faster one in bench/export_speed.py
    load: Callable[..., dict[str, Run]]
    profile: Callable[..., tuple[dict[str, Run], "OpProfile"]]
    stats: Callable[[Path, dict[str, str]], dict]
    modes: tuple[str, ...] = MODES
    dynamic_tokens: bool = True
    spare_rows: bool = False

    def __post_init__(self):
        if not self.modes or not set(self.modes) <= set(MODES) or self.mode not in self.modes:
            raise ValueError(f"runtime {self.name}: default mode {self.mode!r} must be one of its modes {self.modes}, "
                             "which are 'graph' and/or 'routed'")


@dataclass(frozen=True)
class OpProfile:
    """A runtime's per-operator profiler over the runs of its profiled methods.
    read() -> {"ops": [{"op", "backend", "ms", "calls"}] summed over the runs since the start or the last
      restart, "total_ms", "delegated_ms", "backends": what ran the work};
    restart(): forget the runs so far (the warm-up runs: a first run is colder than the rest)."""

    read: Callable[[], dict]
    restart: Callable[[], None]


def cpu_only(device: str, runtime: str) -> None:
    """For a runtime without a GPU path: a device other than "cpu" is refused, never run on the CPU."""
    if device != "cpu":
        raise EdgeError(f"this {runtime} build has no {device} backend; export for onnx to run on {device}")


RUNTIMES: Registry[Runtime] = Registry("runtime")
