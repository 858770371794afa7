"""ONNX / ONNX Runtime: torch.cond becomes If, the ACM gathers NonZero/Gather/ScatterND; in the routed
mode each method is an .onnx file of its own, run by a session of its own."""
from __future__ import annotations

from pathlib import Path

import torch

from export.runtime import LOWERINGS, PRECISIONS

# a quantized model (edge.quant, 8da8w) lowers its QLinears to ONNX Runtime's integer GEMM: the same per-token
# activation quantization, written out in ONNX, then MatMulInteger (see quantized_linears_as_one_op)
PRECISIONS["onnx"] = {"fp32": ("graph", "routed"), "8da8w": ("graph", "routed")}


def file_of(method: str) -> str:
    return "model.onnx" if method == "forward" else f"model.{method}.onnx"


@LOWERINGS.register("onnx")
def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    # What torch.onnx.export(ep, dynamo=True, optimize=True) does, with one registry of ONNX functions
    # for every method: torch.onnx.export builds it from torchlib anew on each call (~1 s; the
    # routed program has a method per segment and ACM). The same graphs as that call gives.
    from torch.onnx import _constants
    from torch.onnx._internal.exporter import _core, _registration

    opset = _constants.ONNX_DEFAULT_OPSET
    registry = _registration.ONNXRegistry.from_torchlib(opset_version=opset)
    registry.register_op(linear_8da8w_op(), linear_8da8w_onnx)
    files = {}
    for method, ep in eps.items():
        ep = quantized_linears_as_one_op(ep)
        files[method] = file_of(method)
        program = _core.export(ep, registry=registry, dynamic_shapes={}, verbose=False, optimize=True, opset_version=opset)
        for graph in [program.model.graph, *program.model.functions.values()]:
            for node in graph.all_nodes():  # the exporter's notes on each node (the exporting machine's source
                node.metadata_props.clear()  # paths, the FX names and scopes): not for shipping, and a quantized
                # Linear's ~35 small nodes made a tiny model's file 2.4x the fp32 one's
        weights_into_branches(program.model.graph)
        program.save(str(Path(directory) / files[method]))
    return files


_OP = []


def linear_8da8w_op():
    """torch.ops.edge_onnx.linear_8da8w(x, qweight, scales, bias): a QLinear of 8-bit weights (edge.quant)
    as one op, for the ONNX lowering to write as ONNX Runtime's integer GEMM. In PyTorch it computes
    what the QLinear does (the same quantized_decomposed ops)."""
    if not _OP:
        from edge.quant import QLinear

        lib = torch.library.Library("edge_onnx", "DEF")
        lib.define("linear_8da8w(Tensor x, Tensor qweight, Tensor scales, Tensor? bias) -> Tensor")

        def compute(x, qweight, scales, bias):
            q = QLinear(qweight.shape[1], qweight.shape[0], 8, 0, bias is not None)
            q.qweight, q.scales = qweight, scales
            q.bias = bias
            return q(x)

        lib.impl("linear_8da8w", compute, "CompositeExplicitAutograd")
        lib.impl("linear_8da8w", lambda x, qweight, scales, bias: x.new_empty((*x.shape[:-1], qweight.shape[0])), "Meta")
        _OP.append((lib, torch.ops.edge_onnx.linear_8da8w.default))
    return _OP[0][1]


def quantized_linears_as_one_op(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Every QLinear of 8-bit weights in `ep` (and in its cond branches; QLinear.traced) becomes one
    edge_onnx.linear_8da8w node."""
    from edge.quant import QLinear

    target = linear_8da8w_op()
    pending = [ep.graph_module]
    while pending:
        gm = pending.pop()
        pending += [m for m in gm.children() if isinstance(m, torch.fx.GraphModule)]
        found = QLinear.traced(gm)
        for node, x, w in found:
            with gm.graph.inserting_before(node):
                fused = gm.graph.call_function(target, (x, w.args[0], w.args[1], (list(node.args) + [None])[2]))
            fused.meta = dict(node.meta)
            node.replace_all_uses_with(fused)
            gm.graph.erase_node(node)
        if found:
            gm.graph.eliminate_dead_code()
            gm.recompile()
    return ep


def linear_8da8w_onnx(x, qweight, scales, bias):
    """linear_8da8w in ONNX (trace-only onnxscript): each token's scale and zero point exactly as
    quantized_decomposed.choose_qparams_per_token_asymmetric chooses them, the token quantized by one
    QuantizeLinear along the rows (as uint8: the int8 value + 128, zero point + 128; it divides where
    eager multiplies by the reciprocal in float64, so a value on a rounding tie may land one step
    apart: within the plan's tolerance), then ONNX Runtime's integer GEMM on uint8 x uint8 with the
    weights' zero point 128 (uint8 x int8 saturates in MLAS's AVX2 kernel: wrong sums on a CPU without
    VNNI). MatMulInteger takes the activations' zero point per tensor only, so the per-row one is taken
    out afterwards, exactly: zero point x the weights' column sums (int32, folded at load)."""
    from onnx import TensorProto as T
    from onnxscript import opset20 as op

    n_out, n_in = qweight.shape[0], qweight.shape[1]
    rows = op.Reshape(x, op.Constant(value_ints=[-1, n_in]))  # (R, in): a scale per row
    axis, zero = op.Constant(value_ints=[1]), op.Constant(value_float=0.0)
    lo = op.Min(op.ReduceMin(rows, axis, keepdims=0), zero)
    hi = op.Max(op.ReduceMax(rows, axis, keepdims=0), zero)
    scale = op.Max(op.Div(op.Sub(hi, lo), op.Constant(value_float=255.0)),
                   op.Constant(value_float=float(torch.finfo(torch.float32).eps)))  # (R,)
    low, high = op.Div(lo, scale), op.Div(hi, scale)
    qmin, qmax = op.Constant(value_float=-128.0), op.Constant(value_float=127.0)
    point = op.Where(op.Greater(op.Add(op.Add(qmin, low), op.Add(qmax, high)), zero), op.Sub(qmin, low), op.Sub(qmax, high))
    shifted = op.Add(op.Round(op.Clip(point, qmin, qmax)), op.Constant(value_float=128.0))  # (R,) the uint8 zero point
    xu = op.QuantizeLinear(rows, scale, op.Cast(shifted, to=T.UINT8), axis=0)  # (R, in) uint8
    wt = op.Transpose(qweight, perm=[1, 0])  # (in, out) int8
    wu = op.Cast(op.Add(op.Cast(wt, to=T.INT16), op.Constant(value=_scalar(128, "int16"))), to=T.UINT8)
    acc = op.MatMulInteger(xu, wu, op.Constant(value=_scalar(0, "uint8")), op.Constant(value=_scalar(128, "uint8")))
    sums = op.ReduceSum(op.Cast(wt, to=T.INT32), op.Constant(value_ints=[0]), keepdims=1)  # (1, out)
    acc = op.Sub(acc, op.Mul(op.Unsqueeze(op.Cast(shifted, to=T.INT32), axis), sums))  # sum (xq - zero point) w
    y = op.Mul(op.Mul(op.Cast(acc, to=T.FLOAT), scales), op.Unsqueeze(scale, axis))
    y = y if bias is None else op.Add(y, bias)
    return op.Reshape(y, op.Concat(op.Shape(x, end=-1), op.Constant(value_ints=[n_out]), axis=0))


def _scalar(v, dtype: str):
    import numpy as np
    import onnx

    return onnx.numpy_helper.from_array(np.array(v, dtype=dtype))


def weights_into_branches(graph) -> None:
    """Move every initializer that only nodes inside one If branch read into that branch (the
    innermost graph holding all its readers). ONNX Runtime pre-packs a MatMul's constant weight
    once, at load, only when the weight is an initializer of the MatMul's own graph; one read from
    an enclosing graph is packed again on every run: in MiniLM with exits (the rest of the network
    inside the exits' If branches) the MatMuls of layers 3-6 ran 1.2x slower, the model 1.09x the
    dense one's time, 1.03x with its weights moved. (A weight read in two branches stays where it
    is: moving it would copy it.)"""
    import onnx_ir as ir

    parent = {}  # subgraph -> the graph holding its If node

    def walk(g):
        for node in g:
            for attr in node.attributes.values():
                subs = [attr.value] if attr.type == ir.AttributeType.GRAPH else \
                    list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
                for sub in subs:
                    parent[sub] = g
                    walk(sub)

    walk(graph)

    def chain(g):  # the main graph, ..., g's parent, g
        out = [g]
        while out[-1] in parent:
            out.append(parent[out[-1]])
        return out[::-1]

    for name, value in list(graph.initializers.items()):
        readers = [chain(node.graph) for node, _ in value.uses()]
        common = readers[0] if readers else []  # the chain all readers share, main graph first
        for c in readers[1:]:
            common = [g for g, h in zip(common, c) if g is h]  # (once two chains part they never meet again)
        if len(common) > 1:
            graph.initializers.pop(name)
            common[-1].register_initializer(value)


# ONNX Runtime fusions that make its CPU kernels slower: SkipLayerNormalization (a residual Add
# fused into the LayerNorm) ran 220 us on (1, 128, 384) where Add + LayerNormalization run 30 us,
# and BiasGelu ran 2.4x the time of the bias in the MatMul and a Gelu; MiniLM ran 0.86x the time
# of ORT's default session without them (bench/ort_fusions.py measures each on this machine). The CPU's
# kernels only: ORT's CUDA kernels for them were not measured (no GPU here), so CUDA sessions keep them.
