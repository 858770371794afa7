"""ExecuTorch (.pte, XNNPACK): one program file with one method per segment (routed mode) or a single
"forward" (in-graph mode). In the in-graph mode torch.cond becomes JumpFalse and the branches and the
ACM gathers run on the portable kernels (XNNPACK neither reaches into cond branches nor takes tensors
of data-dependent size); in the routed mode every method is plain and XNNPACK takes what it can."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.errors import EdgeError
from export.runtime import RUNTIMES, Runtime

FILE = "model.pte"


def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, naive
    from executorch.exir.passes import MemoryPlanningPass

    class BranchPartitioner(XnnpackPartitioner):
        # XNNPACK keeps linear etc. whole for itself, but it does not reach into cond branches, which
        # are then left with ops the portable kernels lack: decompose everything to core ATen instead
        def ops_to_not_decompose(self, ep):
            return [], None

    partitioner = BranchPartitioner() if control_flow else XnnpackPartitioner()
    program = to_edge_transform_and_lower(eps, partitioner=[partitioner],
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False))
    config = ExecutorchBackendConfig()
    if control_flow:  # greedy planning gives chained conds overlapping buffers (wrong outputs, executorch issue 21490)
        config = ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(
            memory_planning_algo=MemoryPlanningAlgorithmSuite([naive])))
    with open(Path(directory) / FILE, "wb") as f:
        program.to_executorch(config).write_to_file(f)
    return {method: FILE for method in eps}


def load(directory: Path, files: dict[str, str], threads: int | None = None) -> dict:
    from executorch.runtime import Runtime as EtRuntime

    if threads:  # XNNPACK's thread pool is process-wide
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    runs, programs = {}, {}
    for method, name in files.items():
        path = Path(directory) / name
        try:
            if name not in programs:
                programs[name] = EtRuntime.get().load_program(str(path))
            loaded = programs[name].load_method(method)
        except Exception as e:
            raise EdgeError(f"{path} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:200]}); export it again") from None

        def run(inputs: list[np.ndarray], loaded=loaded, method=method) -> list[np.ndarray]:
            try:
                outputs = loaded.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
            except RuntimeError as e:
                shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
                raise EdgeError(f"ExecuTorch failed running method {method} on inputs of shape {shapes} "
                                f"({str(e).strip()[:200]}); check the inputs against plan.json") from None
            return [o.numpy() for o in outputs]

        runs[method] = run
    return runs


def stats(directory: Path, files: dict[str, str]) -> dict:
    from executorch.exir._serialize._program import deserialize_pte_binary

    kinds, ops = [], []
    for name in sorted(set(files.values())):
        program = deserialize_pte_binary((Path(directory) / name).read_bytes())
        for plan in getattr(program, "program", program).execution_plan:
            instructions = [i.instr_args for c in plan.chains for i in c.instructions]
            kinds += [type(a).__name__ for a in instructions]
            ops += [plan.operators[a.op_index].name for a in instructions if type(a).__name__ == "KernelCall"]
    return {"branches": kinds.count("JumpFalseCall"), "gathers": ops.count("aten::nonzero"),
            "delegates": kinds.count("DelegateCall"), "kernels": len(ops)}


EXECUTORCH = RUNTIMES.register("executorch")(Runtime("executorch", "routed", lower, load, stats))
