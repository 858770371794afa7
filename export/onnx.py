"""ONNX / ONNX Runtime: torch.cond becomes If, the ACM gathers NonZero/Gather/ScatterND; in the routed
mode each method is an .onnx file of its own, run by a session of its own."""
from __future__ import annotations

from pathlib import Path

import torch

from export.runtime import LOWERINGS


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
    files = {}
    for method, ep in eps.items():
        files[method] = file_of(method)
        program = _core.export(ep, registry=registry, dynamic_shapes={}, verbose=False, optimize=True, opset_version=opset)
        for graph in [program.model.graph, *program.model.functions.values()]:
            for node in graph.all_nodes():  # the exporting machine's source paths: not for shipping
                node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
        weights_into_branches(program.model.graph)
        program.save(str(Path(directory) / files[method]))
    return files


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
