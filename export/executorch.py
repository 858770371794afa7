"""ExecuTorch (.pte, XNNPACK): torch.cond becomes JumpFalse in the program, the ACM gathers run on
the portable kernels (XNNPACK cannot take tensors of data-dependent size), everything else that
XNNPACK can take is delegated to it."""
from __future__ import annotations

import numpy as np
import torch

from edge.errors import EdgeError
from export.runtime import RUNTIMES, Runtime


def lower(ep: torch.export.ExportedProgram, path: str) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, naive
    from executorch.exir.passes import MemoryPlanningPass

    class Partitioner(XnnpackPartitioner):
        # XNNPACK keeps linear etc. whole for itself, but it does not reach into cond branches, which
        # are then left with ops the portable kernels lack: decompose everything to core ATen instead
        def ops_to_not_decompose(self, ep):
            return [], None

    program = to_edge_transform_and_lower(ep, partitioner=[Partitioner()],
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False))
    # greedy planning gives chained conds overlapping buffers (wrong outputs, executorch issue 21490)
    planning = MemoryPlanningPass(memory_planning_algo=MemoryPlanningAlgorithmSuite([naive]))
    et = program.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planning))
    with open(path, "wb") as f:
        et.write_to_file(f)


def load(path: str, threads: int | None = None):
    from executorch.runtime import Runtime as EtRuntime

    if threads:  # XNNPACK's thread pool is process-wide
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    try:
        method = EtRuntime.get().load_program(path).load_method("forward")
    except Exception as e:
        raise EdgeError(f"{path} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:200]}); export it again") from None

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])]

    return run


def stats(path: str) -> dict:
    from executorch.exir._serialize._program import deserialize_pte_binary

    with open(path, "rb") as f:
        program = deserialize_pte_binary(f.read())
    plan = getattr(program, "program", program).execution_plan[0]
    kinds = [type(i.instr_args).__name__ for c in plan.chains for i in c.instructions]
    ops = [plan.operators[i.instr_args.op_index].name for c in plan.chains for i in c.instructions
           if type(i.instr_args).__name__ == "KernelCall"]
    return {"branches": kinds.count("JumpFalseCall"), "gathers": ops.count("aten::nonzero"),
            "delegates": kinds.count("DelegateCall")}


EXECUTORCH = RUNTIMES.register("executorch")(Runtime("executorch", ".pte", lower, load, stats))
