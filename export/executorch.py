"""ExecuTorch (.pte, XNNPACK): one program file with one method per segment (routed mode) or a single
"forward" (in-graph mode). In the in-graph mode torch.cond becomes JumpFalse; XNNPACK takes the work
inside the branches as well (their weights made constants of the branch: weights_into_branches), and
the ACM learners on their gathered tokens, a data-dependent size that is never 0 (each learner gathers
one spare row: Runtime.spare_rows, sized_rows_allowed). In the routed mode every method is plain and
XNNPACK takes what it can."""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from types import SimpleNamespace

import torch

from export.runtime import LOWERINGS, PRECISIONS

FILE = "model.pte"
# a quantized model's QLinears (edge.quant: quantized_decomposed per-token activations, per-channel or
# per-group weights) are XNNPACK's dynamically quantized GEMMs; int4 weights (8da4w) in the routed mode
# only: in the graph mode XNNPACK's partitioner leaves the int4 GEMMs inside the cond branches and on
# the ACMs' gathered tokens to the portable kernels, which have no quantized ops (the lowering fails)
PRECISIONS["executorch"] = {"fp32": ("graph", "routed"), "8da8w": ("graph", "routed"), "8da4w": ("routed",)}


def graphs(gm: torch.fx.GraphModule) -> list[torch.fx.GraphModule]:
    """gm and every cond branch below it (nested ones too)."""
    from executorch.exir.graph_module import get_control_flow_submodules

    return [gm] + [g for _, sub, _ in get_control_flow_submodules(gm) for g in graphs(sub)]


def one_inferred_size(gm: torch.fx.GraphModule):
    """An ExecuTorch transform pass: a view to a shape with one dynamic size (the tokens) gets that
    size as -1. XNNPACK reshapes with one inferred size but takes no symbolic one, so such views
    (every head split of attention) stayed on the portable kernels and cut the delegates apart:
    MiniLM 41 delegates -> 17, 77 kernels outside them -> 29, lowering 0.79x the time."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    changed = False
    for g in graphs(gm):
        fixed = False
        for node in g.graph.nodes:
            if node.op == "call_function" and node.target == exir_ops.edge.aten.view_copy.default:
                shape = node.meta["val"].shape
                dynamic = [i for i, size in enumerate(shape) if not isinstance(size, int)]
                if len(dynamic) == 1:
                    node.args = (node.args[0], [-1 if i in dynamic else size for i, size in enumerate(shape)])
                    fixed = True
        if fixed:
            g.graph.eliminate_dead_code()
            g.recompile()
        changed |= fixed
    return PassResult(gm, changed)


def layer_norm_as_xnnpack_ops(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Every LayerNorm over the last dim as ops XNNPACK takes (it has no LayerNorm): the input viewed
    (1, rows, d, 1), mean.dim over [2, 3] (its global average pooling), sub, mul, rsqrt. On the
    portable kernels LayerNorm took ~70 us a call at 128 tokens and cut the delegates around it apart."""
    for gm in graphs(ep.graph_module):
        _layer_norms_as_xnnpack_ops(gm)
    return ep


def _layer_norms_as_xnnpack_ops(gm: torch.fx.GraphModule) -> None:
    aten, g = torch.ops.aten, gm.graph
    call = lambda op, *args: g.call_function(op, args)  # noqa: E731
    for node in [n for n in g.nodes if n.op == "call_function" and n.target == aten.layer_norm.default]:
        x, shape, w, b, eps = (list(node.args) + [None, None, 1e-5])[:5]
        dims = list(x.meta["val"].shape)
        dynamic = [i for i, size in enumerate(dims) if not isinstance(size, int)]
        if len(shape) != 1 or len(dynamic) > 1:
            continue
        with g.inserting_before(node):
            x4 = call(aten.reshape.default, x, [1, -1, shape[0], 1])
            xc = call(aten.sub.Tensor, x4, call(aten.mean.dim, x4, [2, 3], True))
            var = call(aten.mean.dim, call(aten.mul.Tensor, xc, xc), [2, 3], True)
            y = call(aten.mul.Tensor, xc, call(aten.rsqrt.default, call(aten.add.Tensor, var, eps)))
            y = call(aten.reshape.default, y, [-1 if i in dynamic else size for i, size in enumerate(dims)])
            y = call(aten.mul.Tensor, y, w) if w is not None else y
            y = call(aten.add.Tensor, y, b) if b is not None else y
        node.replace_all_uses_with(y)
        g.erase_node(node)
    gm.recompile()


WEIGHT = "_edge_weight"  # the name of a weight made a constant of a branch (a number follows)
FOLDED = {"select_copy", "slice_copy", "permute_copy", "t_copy", "view_copy", "unsqueeze_copy", "squeeze_copy",
          "expand_copy", "clone", "alias_copy", "_clone_dim_order", "_to_dim_order_copy"}  # views and copies of a weight


def weights_into_branches(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """An edge program's cond branches read the weights as operands passed in from the top graph, and
    XNNPACK takes a Linear only on a constant weight: every weight a branch reads becomes a constant
    of that branch (get_attr), nested branches down to the graph that reads it, views and copies
    of a weight there (an ACM learner's slice of its stacked weights) folded into constants of their
    own, and the top graph keeps only the weights it reads itself."""
    from torch.export.graph_signature import InputKind

    from export.lower import without_unused_weights

    specs = [s for s in ep.graph_signature.input_specs
             if s.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)]
    value = {s.arg.name: ep.state_dict[s.target] if s.target in ep.state_dict else ep.constants[s.target] for s in specs}
    made = itertools.count()

    def constant(gm, tensor):
        name = f"{WEIGHT}{next(made)}"
        gm.register_buffer(name, tensor)
        return name

    def sink(gm: torch.fx.GraphModule, known: dict) -> None:
        """known: the nodes of gm that are constants -> their tensors."""
        for node in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.higher_order.cond]:
            pred, yes, no, operands = node.args
            moved = [i for i, o in enumerate(operands) if o in known]
            for branch in (yes, no):
                sub = getattr(gm, branch.target)
                places = [p for p in sub.graph.nodes if p.op == "placeholder"]
                inner = {}
                for i in moved:
                    with sub.graph.inserting_after(places[-1]):
                        g = sub.graph.get_attr(constant(sub, known[operands[i]]))
                    g.meta = dict(places[i].meta)
                    places[i].replace_all_uses_with(g)
                    sub.graph.erase_node(places[i])
                    inner[g] = known[operands[i]]
                fold(sub, inner)
                sink(sub, inner)
                for g in [g for g in sub.graph.nodes if g.op == "get_attr" and g.target.startswith(WEIGHT) and not g.users]:
                    sub.graph.erase_node(g)
                    delattr(sub, g.target)
                sub.recompile()
            node.args = (pred, yes, no, [o for i, o in enumerate(operands) if i not in moved])
        gm.recompile()

    def fold(gm: torch.fx.GraphModule, known: dict) -> None:
        for node in list(gm.graph.nodes):
            inputs = node.all_input_nodes
            if node.op != "call_function" or not inputs or any(n not in known for n in inputs):
                continue
            if getattr(getattr(node.target, "_schema", None), "name", "").split("::")[-1] not in FOLDED:
                continue
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: known[n])
            with torch.no_grad():
                out = node.target(*args, **kwargs).contiguous()
            with gm.graph.inserting_before(node):
                g = gm.graph.get_attr(constant(gm, out))
            g.meta = dict(node.meta)
            node.replace_all_uses_with(g)
            gm.graph.erase_node(node)
            known[g] = out

    top = ep.graph_module
    sink(top, {n: value[n.name] for n in top.graph.nodes if n.op == "placeholder" and n.name in value
               and (value[n.name].is_floating_point() or value[n.name].dtype == torch.int8)})
    # (a quantized Linear's int8 weights go with the fp32 ones; the graph's own integer tables stay operands)
    return without_unused_weights(ep)


@contextlib.contextmanager
def sized_rows_allowed():
    """XNNPACK's partitioner refuses every tensor with a data-dependent size (its runtime takes no
    empty tensor, and such a size may be 0): the ACM learners' gathered tokens. Each learner gathers
    one spare row besides its tokens (edge.acm.ACM.gathered), so its size is 1 + m, never 0, which
    the shape environment proves: while partitioning, a data-dependent size is refused only where
    it may be 0. (The partitioner asks edge's question through this module global of its config.)"""
    from executorch.backends.xnnpack.partition.config import xnnpack_config
    from torch.fx.experimental.symbolic_shapes import has_free_unbacked_symbols, statically_known_true

    def may_be_empty(value) -> bool:
        return has_free_unbacked_symbols(value) and not statically_known_true(value.numel() > 0)

    xnnpack_config.has_free_unbacked_symbols = may_be_empty
    try:
        yield
    finally:
        xnnpack_config.has_free_unbacked_symbols = has_free_unbacked_symbols


def dynamic_int8(module: torch.nn.Module, example: tuple, dynamic: tuple | dict) -> torch.export.ExportedProgram:
    """`module` exported with every Linear as XNNPACK's dynamically quantized GEMM (qd8-f32-qc8w:
    int8 weights per output channel, activations quantized per call; the rest stays fp32), through
    ExecuTorch's XNNPACK quantizer. dynamic: torch.export's dynamic_shapes for `module` and `example`.
    For measurements (bench/acm_layer.py --int8): edge's exports are fp32 (their parity check is
    fp32's 1e-4), and a quantized one would need its own."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                       get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(torch.export.export(module, example, dynamic_shapes=dynamic).module(), quantizer)
    prepared(*example)  # (dynamic quantization has nothing to calibrate; the observers still want a call)
    if isinstance(dynamic, dict):  # (by argument name; the quantized module takes its inputs flat, one by one)
        dynamic = tuple(d for v in dynamic.values() for d in (v if isinstance(v, (tuple, list)) else (v,)))
    return torch.export.export(convert_pt2e(prepared), example, dynamic_shapes=dynamic)


@LOWERINGS.register("executorch")
def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import (EdgeCompileConfig, EdgeProgramManager, ExecutorchBackendConfig, to_edge,
                                to_edge_transform_and_lower)
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, naive
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import \
        generate_grouped_partitions_from_list_of_nodes
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class BranchPartitioner(XnnpackPartitioner):
        # XNNPACK's partitioner looks at the top graph only; ExecuTorch's to_backend lowers what is
        # tagged inside cond branches as well: tag the branches' nodes too (their weights are
        # constants there: weights_into_branches). MiniLM with exits after layers 2-5 (the rest of
        # the network in their branches), 1 thread: 1.01x the dense program's time, ~50x before
        def partition(self, ep):
            with sized_rows_allowed():
                result = super().partition(ep)
                for b, gm in enumerate(graphs(ep.graph_module)[1:]):
                    view = SimpleNamespace(graph_module=gm, graph=gm.graph, graph_signature=ep.graph_signature,
                                           state_dict=ep.state_dict, constants=ep.constants)
                    for part in generate_grouped_partitions_from_list_of_nodes(gm, self.get_matched_nodes_from_configs(view)):
                        tag = f"branch{b}_{part.id}"
                        for node in part.nodes:
                            node.meta["delegation_tag"] = tag
                        result.partition_tags[tag] = self.delegation_spec
            return result

    class CheckedPartitioner(XnnpackPartitioner):
        # A partitioner that hands ExecuTorch a per-node check of the ops it keeps whole gets every
        # method decomposed three times (the check's path); when the check passes every such node
        # here, there is no check to make, and those ops are kept as to_edge's preserve_ops
        def ops_to_not_decompose(self, ep):
            ops, check = super().ops_to_not_decompose(ep)
            kept = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in ops]
            return (ops, None) if check is not None and all(check(n) for n in kept) else (ops, check)

    partitioner = BranchPartitioner() if control_flow else CheckedPartitioner()  # (in-graph: Linear kept whole)
    eps = {m: layer_norm_as_xnnpack_ops(ep) for m, ep in eps.items()}
    keep = [partitioner.ops_to_not_decompose(ep) for ep in eps.values()]
    if control_flow or all(check is None for _, check in keep):
        # to_edge_transform_and_lower decomposes each method twice (once to functionalize, once to
        # core ATen); to_edge with the kept ops preserved does it in one pass: the same program, byte
        # for byte (MiniLM's routed program, 29 methods: lowered in 100.7 s instead of 124.8 s). One
        # to_edge per method: its verifier extends the config's preserve_ops list with itself, so one
        # call over n methods would pop 2^n copies of it from the decomposition table
        preserve = list(dict.fromkeys(op for ops, _ in keep for op in ops))
        edge = {m: to_edge({m: ep}, compile_config=EdgeCompileConfig(_check_ir_validity=False, preserve_ops=list(preserve)))
                .exported_program(m) for m, ep in eps.items()}
        if control_flow:  # (views of weights folded: the top graph's by ExecuTorch's pass, the branches' by ours:
            # an ACM learner's weight is a slice of its stacked weights, and XNNPACK takes a Linear on a constant)
            edge = {m: weights_into_branches(constant_prop_pass(ep)) for m, ep in edge.items()}
        program = EdgeProgramManager(edge, compile_config=EdgeCompileConfig(_check_ir_validity=False))
        program = program.transform([one_inferred_size]).to_backend(partitioner)
    else:
        program = to_edge_transform_and_lower(eps, transform_passes=[one_inferred_size], partitioner=[partitioner],
                                              compile_config=EdgeCompileConfig(_check_ir_validity=False))
    # a method's inputs are read where the caller has them (for a routed program: mostly the previous
    # method's output) instead of copied into the method's planned memory first: the gated MiniLM with
    # every gate open 3-6 % faster (23 calls a run), k = 0 4-8 %, side by side with the copying program
    # (greedy planning gives chained conds overlapping buffers: wrong outputs, executorch issue 21490)
    planning = (dict(memory_planning_algo=MemoryPlanningAlgorithmSuite([naive])) if control_flow
                else dict(alloc_graph_input=False))
    config = ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(**planning))
    with open(Path(directory) / FILE, "wb") as f:
        program.to_executorch(config).write_to_file(f)
    return {method: FILE for method in eps}
