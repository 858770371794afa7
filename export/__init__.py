"""export: lower an adaptive edge model to on-device runtimes, keeping its control flow, and check
every artifact against eager PyTorch on every branch.

    import edge, export
    art = export.to_onnx(model, "out/minilm-onnx", example_batch)   # model.onnx + plan.json + checks
    export.verify(art)                                               # re-run the bundled branch checks
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from device import MODES, RUNTIMES, Artifact, load_artifact  # (the device side's: re-exported for the export API)
from export import executorch as _executorch  # noqa: F401  (registers "executorch"; imports it lazily)
from export import litert as _litert  # noqa: F401  (registers "litert"; imports LiteRT lazily)
from export import onnx as _onnx  # noqa: F401  (registers "onnx"; imports ONNX Runtime lazily)
from export.checks import force_cases, verify
from export.inputs import artifact_inputs, example_input, levels_from_text
from export.lower import budget_levels, to_runtime
from export.runtime import precisions


def to_onnx(model: nn.Module, out: str | Path, example: dict, overwrite: bool = False, progress: bool = True,
            mode: str | None = None, levels: list[dict] | None = None, tokenizer=None) -> Artifact:
    """Export to ONNX (ONNX Runtime). graph (the default): exits and skips as If, ACM routing as NonZero/Gather/
    ScatterND in one model; routed: one model per segment and per adaptive FFN (its learners or experts), run by the plan's driver."""
    return to_runtime(model, "onnx", out, example, overwrite, progress, mode, levels, tokenizer)


def to_executorch(model: nn.Module, out: str | Path, example: dict, overwrite: bool = False,
                  progress: bool = True, mode: str | None = None, levels: list[dict] | None = None,
                  tokenizer=None) -> Artifact:
    """Export to ExecuTorch (.pte). routed (the default): one XNNPACK-delegated method per segment and per adaptive FFN (its units), run
    by the plan's driver; graph: one method, exits and skips as cond, ACM routing as gathers, the branches' work on
    XNNPACK too."""
    return to_runtime(model, "executorch", out, example, overwrite, progress, mode, levels, tokenizer)


def to_litert(model: nn.Module, out: str | Path, example: dict, overwrite: bool = False, progress: bool = True,
              mode: str | None = None, levels: list[dict] | None = None, tokenizer=None) -> Artifact:
    """Export to LiteRT (.tflite, the `litert` extra). routed only: one signature per segment and per adaptive FFN (its
    units) in one model.tflite, run by the plan's driver; a sequence model takes the example's token count."""
    return to_runtime(model, "litert", out, example, overwrite, progress, mode, levels, tokenizer)


__all__ = ["to_executorch", "to_litert", "Artifact", "MODES", "budget_levels", "RUNTIMES", "force_cases", "load_artifact", "to_onnx", "to_runtime", "verify",
           "artifact_inputs", "example_input", "levels_from_text", "precisions"]
