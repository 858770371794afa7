"""LiteRT (.tflite): litert-torch converts every method into a signature of one model.tflite, and
ai-edge-litert's interpreter runs it (its XNNPACK delegate takes what it can). The routed mode only:
litert-torch 0.10 has no lowering for torch.cond ("Lowering not found: cond") nor for nonzero, so the
exits, skips and ACM routing stay in the plan's driver. It converts at static shapes (given a dynamic
token size it fails to lower a slice with a symbolic end, as of the position ids, an arange of it,
and the attention's head-split reshapes): a sequence model's segments take exactly the example's
token count (the plan's input spec says so); the learners of an ACM take any number of rows (the
interpreter resizes a signature's input on each call).

int8 (8da8w, routed): litert-torch 0.10 leaves quantize/dequantize annotations of a PyTorch graph
unlowered (STABLEHLO_CUSTOM_CALL, which the interpreter cannot run; its V2 converter that lowers them
needs a tf-nightly build), so the quantized Linears go through as fp32 Linears whose weights are the
dequantized int8 ones, and ai-edge-quantizer then makes each of them a dynamic-range FULLY_CONNECTED:
the same int8 weights back (symmetric per channel: the scale max|w| / 127 of weights that are already
k x scale gives the same integers), int8 activations per row at run time (LiteRT's hybrid kernel). The
embeddings' int8 rows go through as they are (an int8 GATHER and a multiply).
Needs the `litert` extra (litert-torch, ai-edge-litert, ai-edge-quantizer)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from device.litert import EXTRA, FILE, _quiet
from edge.errors import EdgeError
from edge.quant import QLinear
from export.runtime import LOWERINGS, PRECISIONS

PRECISIONS["litert"] = {"fp32": ("routed",), "8da8w": ("routed",)}


def _as_float_linears(module: torch.fx.GraphModule) -> int:
    """Every QLinear of 8-bit weights traced in `module` (QLinear.traced) becomes a plain linear of its
    dequantized weight (a constant); returns how many."""
    qd = torch.ops.quantized_decomposed
    count = 0
    for node, x, w in QLinear.traced(module):
        if not all(a.op == "get_attr" for a in w.args[:3]):
            continue
        tensors = [_attr(module, a.target) for a in w.args[:3]]
        name = f"_edge_dequantized_{count}"
        module.register_buffer(name, qd.dequantize_per_channel(*tensors, *w.args[3:]).contiguous())
        with module.graph.inserting_before(node):
            weight = module.graph.get_attr(name)
        node.replace_input_with(w, weight)
        node.replace_input_with(node.args[0], x)  # (the activations' quantization: the runtime's)
        count += 1
    if count:
        module.graph.eliminate_dead_code()
        module.recompile()
    return count


def _attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    *path, last = target.split(".")
    for part in path:
        module = getattr(module, part)
    return getattr(module, last)


MARK = "#edge-8da8w"  # (added to the name of a quantized Linear's output while ai-edge-quantizer runs)


def _gemms(model) -> list[tuple]:
    """(subgraph, operator, op name, weight tensor or None) of every operator in a read .tflite."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    names = {code: getattr(name, "value", name) for code, name in fb.TFL_OP_CODE_TO_NAME.items()}
    return [(g, op, names.get(model.operatorCodes[op.opcodeIndex].builtinCode, "?"),
             g.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None)
            for g in model.subgraphs for op in g.operators]


def _dynamic_range(path: Path, expected: int) -> None:
    """The FULLY_CONNECTEDs of QLinears in the .tflite at `path` (the converter names a weight by its
    module's path) in dynamic-range int8: weights int8 per channel, activations int8 per row at run
    time; everything else as it is. Exactly `expected` of them, or the export fails. (ai-edge-quantizer
    picks ops by the names of their outputs, which a signature's output renames: the chosen ones'
    outputs carry MARK while it runs.)"""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    scope = f"{QLinear.__module__}.{QLinear.__qualname__}_".encode()
    model = fb.read_model(path.read_bytes())
    for g, op, name, weight in _gemms(model):
        if name == "FULLY_CONNECTED" and weight is not None and scope in (weight.name or b""):
            g.tensors[op.outputs[0]].name += MARK.encode()
    q = quantizer.Quantizer(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    q.load_quantization_recipe([dict(recipe.dynamic_wi8_afp32()[0], regex=f".*{re.escape(MARK)}.*",
                                     operation="FULLY_CONNECTED")])
    with contextlib.redirect_stdout(io.StringIO()):  # (it prints a summary)
        model = fb.read_model(q.quantize().quantized_model)
    done = 0
    for g, op, name, weight in _gemms(model):
        done += name == "FULLY_CONNECTED" and weight is not None and fb.TENSOR_CODE_TO_TYPE[weight.type] == "INT8"
        for t in (g.tensors[i] for i in op.outputs):
            t.name = (t.name or b"").replace(MARK.encode(), b"")
    if done != expected:
        raise EdgeError(f"LiteRT: {done} of the {expected} quantized Linears became int8 FULLY_CONNECTED ops; "
                        f"export this model in fp32 or for another runtime")
    tmp = path.with_name(path.name + ".int8")
    tmp.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    tmp.replace(path)


@LOWERINGS.register("litert")
def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    try:
        import litert_torch
    except ImportError:
        raise EdgeError(f"exporting for LiteRT needs its converter: {EXTRA}") from None
    litert_torch.config.show_progress = False
    converter, quantized = litert_torch, 0
    for method, ep in eps.items():  # (traced again by the converter, at the example's shapes)
        module = ep.module()
        module.training = False  # (eval() raises on an exported module; the graph was traced in eval mode)
        quantized += _as_float_linears(module)
        converter = converter.signature(method, module, ep.example_inputs[0])
    path = Path(directory) / FILE
    with _quiet():
        model = converter.convert(enable_x64=True)  # (the int64 ids and ks stay int64)
        model.export(str(path))
        if quantized:
            _dynamic_range(path, quantized)
    return {method: FILE for method in eps}
