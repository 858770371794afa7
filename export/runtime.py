"""The export side's runtime registry: how a model's ExportedPrograms are lowered for each runtime
(export/<runtime>.py registers its `lower`). What a runtime can run (its modes, its default mode,
token sizes) and how an artifact is loaded are the device side's: device.runtime.RUNTIMES."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from edge.registry import Registry

# lower(eps, directory, control_flow) -> {method: file}: write the ExportedPrograms {method: ep} into the
# directory (control_flow: the in-graph mode's program: torch.cond, data-dependent gathers)
Lower = Callable[[dict, Path, bool], dict[str, str]]
LOWERINGS: Registry[Lower] = Registry("lowering")

# runtime -> the precisions its lowering takes (a plan's "precision": "fp32", or a scheme of edge.quant)
PRECISIONS: dict[str, tuple[str, ...]] = {}


def precisions(runtime: str) -> tuple[str, ...]:
    return PRECISIONS.get(runtime, ("fp32",))
