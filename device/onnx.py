"""ONNX Runtime on the device side: one session per .onnx file of the artifact (the in-graph mode has
one, the routed mode one per method), its profiler, and what a program keeps (If, NonZero)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runtime import RUNTIMES, OpProfile, Runtime
from edge.errors import EdgeError

SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")
# ONNX Runtime's memory pattern (one block planned for a run's tensors) made a gated graph's CPU session
# 5-6 % slower (MiniLM with ACMs, exits and routers: ~0.3-0.4 ms a run for each exit's If); the dense
# MiniLM runs the same either way (bench/ort_fusions.py).
MEMORY_PATTERN = False
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}  # (cuda: onnxruntime-gpu, edge[cuda])


def _sessions(directory: Path, files: dict[str, str], threads: int | None, profile: bool = False,
              device: str = "cpu") -> dict:
    import onnxruntime as ort

    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():  # asking anyway would silently give the CPU
        raise EdgeError(f"ONNX Runtime here has no {provider} (it has {', '.join(ort.get_available_providers())}); "
                        f"on a machine with an NVIDIA GPU and driver: pip install 'edge[cuda]' (onnxruntime-gpu)")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_profiling = profile
    opts.enable_mem_pattern = MEMORY_PATTERN if device == "cpu" else True
    if profile:  # ORT writes its trace into the working directory unless told where
        import tempfile

        opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edge-ort-profile-")) / "ort")
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sessions = {}
    for method, name in files.items():
        path = Path(directory) / name
        try:
            session = ort.InferenceSession(str(path), opts, providers=[provider],
                                           disabled_optimizers=list(SLOW_FUSIONS) if device == "cpu" else [])
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise EdgeError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]}); export it again") from None
        if session.get_providers()[0] != provider:  # a silent fallback would measure something else
            raise EdgeError(f"ONNX Runtime runs {path} on {session.get_providers()}, not {provider}")
        sessions[method] = session
    return sessions


def _runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs)))

    return run


def load(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu") -> dict:
    return {m: _runner(s) for m, s in _sessions(directory, files, threads, device=device).items()}


def profile(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu"):
    """ONNX Runtime's profiler: a Chrome-trace JSON per session; every "Node" event is one operator
    run, with its op type, execution provider and duration. Its trace ends with end_profiling, so a
    restart only counts each session's runs so far: read() drops them and their events."""
    import json
    import shutil

    sessions = _sessions(directory, files, threads, profile=True, device=device)
    calls = dict.fromkeys(sessions, 0)  # runs of each session
    skip = dict.fromkeys(sessions, 0)  # of which the first `skip` are forgotten

    def counted(method):
        run = _runner(sessions[method])

        def call(inputs: list[np.ndarray]) -> list[np.ndarray]:
            calls[method] += 1
            return run(inputs)

        return call

    def restart() -> None:
        skip.update(calls)

    def read() -> dict:
        table, total = {}, 0.0
        for method, session in sessions.items():
            trace = Path(session.end_profiling())
            with open(trace) as f:
                events = json.load(f)
            shutil.rmtree(trace.parent, ignore_errors=True)
            runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                          key=lambda e: e["ts"])
            last = runs[skip[method] - 1] if skip[method] else None  # the last forgotten run
            start = last["ts"] + last["dur"] if last else -1
            for e in events:
                if e.get("ts", 0) <= start:
                    continue
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    key = (e["args"]["op_name"], e["args"].get("provider", "?"))
                    row = table.setdefault(key, {"op": key[0], "backend": key[1], "ms": 0.0, "calls": 0})
                    row["ms"] += e["dur"] / 1000
                    row["calls"] += 1
                elif e.get("cat") == "Session" and e["name"] == "model_run":
                    total += e["dur"] / 1000
        rows = sorted(table.values(), key=lambda r: -r["ms"])
        return {"ops": rows, "total_ms": total, "delegated_ms": 0.0,
                "backends": sorted({r["backend"] for r in rows})}

    return {m: counted(m) for m in sessions}, OpProfile(read, restart)


def stats(directory: Path, files: dict[str, str]) -> dict:
    import onnx

    def ops(graph):
        for n in graph.node:
            yield n.op_type
            for a in n.attribute:  # the branches of If are subgraphs
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from ops(a.g)

    found = [op for name in sorted(set(files.values())) for op in ops(onnx.load(str(Path(directory) / name)).graph)]
    return {"branches": found.count("If"), "gathers": found.count("NonZero"), "delegates": 0, "kernels": 0}


ONNX = RUNTIMES.register("onnx")(Runtime("onnx", "onnxruntime", "graph", load, profile, stats))
