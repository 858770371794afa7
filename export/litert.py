"""LiteRT (.tflite): litert-torch converts every method into a signature of one model.tflite, and
ai-edge-litert's interpreter runs it (its XNNPACK delegate takes what it can). The routed mode only:
litert-torch 0.10 has no lowering for torch.cond ("Lowering not found: cond") nor for nonzero, so the
exits, skips and ACM routing stay in the plan's driver. It converts at static shapes (given a dynamic
token size it fails to lower a slice with a symbolic end, as of the position ids, an arange of it,
and the attention's head-split reshapes): a sequence model's segments take exactly the example's
token count (the plan's input spec says so); the learners of an ACM take any number of rows (the
interpreter resizes a signature's input on each call).
Needs the `litert` extra (litert-torch, ai-edge-litert)."""
from __future__ import annotations

from pathlib import Path

import torch

from device.litert import EXTRA, FILE, _quiet
from edge.errors import EdgeError
from export.runtime import LOWERINGS


@LOWERINGS.register("litert")
def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    try:
        import litert_torch
    except ImportError:
        raise EdgeError(f"exporting for LiteRT needs its converter: {EXTRA}") from None
    litert_torch.config.show_progress = False
    converter = litert_torch
    for method, ep in eps.items():  # (traced again by the converter, at the example's shapes)
        module = ep.module()
        module.training = False  # (eval() raises on an exported module; the graph was traced in eval mode)
        converter = converter.signature(method, module, ep.example_inputs[0])
    with _quiet():
        model = converter.convert(enable_x64=True)  # (the int64 ids and ks stay int64)
        model.export(str(Path(directory) / FILE))
    return {method: FILE for method in eps}
