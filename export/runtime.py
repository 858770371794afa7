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

# runtime -> {precision: the modes its lowering takes it in} (a plan's "precision": "fp32", or a scheme of
# edge.quant); a runtime not named takes fp32 only, in every mode it has
PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {}


def precisions(runtime: str, mode: str | None = None) -> tuple[str, ...]:
    """The precisions `runtime`'s lowering takes (in `mode`, when given)."""
    got = PRECISIONS.get(runtime, {"fp32": ("graph", "routed")})
    return tuple(p for p, modes in got.items() if mode is None or mode in modes)
