"""ExecuTorch on the device side: the program's methods through the Python runtime, ETDump profiles
read with the devtools Inspector, and what a program keeps (jumps, delegate calls, kernels). The
ExecuTorch pip wheel's Python bindings take torch tensors, so these functions import torch (inside
them): a board without torch measures .pte files with the native runner (profiler/runner)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runtime import RUNTIMES, OpProfile, Runtime, cpu_only
from edge.errors import EdgeError

def load(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu") -> dict:
    import torch  # (the wheel's bindings take torch tensors)
    from executorch.runtime import Runtime as EtRuntime

    cpu_only(device, "ExecuTorch")  # (the pip wheel registers XNNPACK, QNN and OpenVINO only)
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


def profile(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu"):
    """ExecuTorch's ETDump: every operator the program runs is an event (XNNPACK's own operators
    inside a delegate call too), read back with the devtools Inspector; a restart takes the ETDump so
    far and drops it."""
    import tempfile

    import torch  # (the wheel's bindings take torch tensors)
    from executorch.extension.pybindings import portable_lib

    cpu_only(device, "ExecuTorch")
    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    modules = {}
    for name in sorted(set(files.values())):
        try:
            modules[name] = portable_lib._load_for_executorch(str(Path(directory) / name), enable_etdump=True)
        except Exception as e:
            raise EdgeError(f"{Path(directory) / name} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:200]})") from None

    def runner(module, method):
        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            outs = module.run_method(method, tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
            return [o.numpy() for o in outs]
        return run

    def dump(read: bool) -> dict | None:  # taking a module's ETDump data starts a new one
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, module in enumerate(modules.values()):
                paths.append(Path(tmp) / f"etdump{i}.etdp")
                module.write_etdump_result_to_file(str(paths[-1]))
            return read_etdump(paths) if read else None

    return {m: runner(modules[f], m) for m, f in files.items()}, OpProfile(lambda: dump(True), lambda: dump(False))


def read_etdump(paths: list[Path]) -> dict:
    """The per-operator profile in ETDump files (from the Python runtime or the native runner), read
    with the devtools Inspector: {"ops": [{op, backend, ms, calls}], "total_ms", "delegated_ms", "backends"}."""
    from executorch.devtools import Inspector

    table, total, delegated = {}, 0.0, 0.0
    for path in paths:
        try:
            df = Inspector(etdump_path=str(path)).to_dataframe()
        except Exception as e:
            raise EdgeError(f"{path} is not a readable ETDump ({str(e).splitlines()[0][:200]})") from None
        for _, e in df[df["event_block_name"] == "Execute"].iterrows():
            ms = float(sum(e["raw"]))
            if e["event_name"] == "Method::execute":
                total += ms
            elif e["event_name"] == "DELEGATE_CALL":
                delegated += ms
            elif e["event_name"] != "OPERATOR_CALL":  # (that one wraps each native_call_*)
                backend = "XnnpackBackend" if e["is_delegated_op"] else "portable kernels"
                op = e["event_name"].split(" #")[0].removeprefix("native_call_").removesuffix(".out")
                row = table.setdefault((op, backend), {"op": op, "backend": backend, "ms": 0.0, "calls": 0})
                row["ms"] += ms
                row["calls"] += len(e["raw"])
    rows = sorted(table.values(), key=lambda r: -r["ms"])
    return {"ops": rows, "total_ms": total, "delegated_ms": delegated, "backends": sorted({r["backend"] for r in rows})}


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


EXECUTORCH = RUNTIMES.register("executorch")(Runtime("executorch", "executorch", "routed", load, profile, stats,
                                                   spare_rows=True))
