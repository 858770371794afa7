"""LiteRT on the device side: ai-edge-litert's interpreter runs the signatures of model.tflite (its
XNNPACK delegate takes what it can); a signature is timed whole (the Python interpreter has no
per-operator profiler). Needs the `litert` extra's interpreter (ai-edge-litert)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

from device.runtime import RUNTIMES, OpProfile, Runtime, cpu_only
from edge.errors import EdgeError

FILE = "model.tflite"
EXTRA = "pip install 'edge[litert]' (litert-torch and ai-edge-litert)"
MIXED = "XNNPACK + LiteRT kernels"


@contextlib.contextmanager
def _quiet():
    """The converter's and the interpreter's C++ logs (absl INFO lines, "Created TensorFlow Lite
    XNNPACK delegate") go to the process's stderr, past Python: not into edge's progress output."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _by_index(names) -> list[str]:  # args_0, args_1, .., args_10: numeric order, not string order
    return sorted(names, key=lambda name: int(name.rsplit("_", 1)[1]))


def _interpreter(directory: Path, files: dict[str, str], threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise EdgeError(f"running a LiteRT artifact needs the LiteRT interpreter: {EXTRA}") from None
    (name,) = set(files.values())
    path = Path(directory) / name
    try:
        with _quiet():  # (allocating applies the default delegate, which announces itself on stderr)
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
        missing = set(files) - set(interpreter.get_signature_list())
        assert not missing, f"no signature {', '.join(sorted(missing))}"
    except Exception as e:
        raise EdgeError(f"{path} is not a loadable LiteRT model ({str(e).strip().splitlines()[0][:200]}); export it again") from None
    return interpreter


def load(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu") -> dict:
    cpu_only(device, "LiteRT")
    interpreter = _interpreter(directory, files, threads)
    signatures = interpreter.get_signature_list()
    runs = {}
    for method in files:
        runner = interpreter.get_signature_runner(method)
        names = _by_index(signatures[method]["inputs"])

        def run(inputs: list[np.ndarray], runner=runner, names=names, method=method) -> list[np.ndarray]:
            try:
                outputs = runner(**dict(zip(names, inputs)))
            except (RuntimeError, ValueError) as e:
                shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
                raise EdgeError(f"LiteRT failed running signature {method} on inputs of shape {shapes} "
                                f"({str(e).strip()[:200]}); check the inputs against plan.json") from None
            return [np.asarray(outputs[k]) for k in _by_index(outputs)]

        runs[method] = run
    return runs


def profile(directory: Path, files: dict[str, str], threads: int | None = None, device: str = "cpu"):
    """The Python interpreter has no per-operator profiler: each signature call is timed whole, a row
    per signature ("signature NAME"), its backend "XNNPACK" where the delegate took every operator of
    it (stats' count), else "XNNPACK + LiteRT kernels" (a delegate and a few operators outside it: the
    split is not measured, so delegated_ms counts the whole-delegate signatures only, a lower bound)."""
    runs = load(directory, files, threads, device)
    whole = {m: outside == 0 for m, (_, outside) in _signature_nodes(Path(directory) / FILE).items()}
    table = {}

    def timed(method, run):
        row = table.setdefault(method, {"op": f"signature {method}", "backend": "XNNPACK" if whole[method] else MIXED,
                                        "ms": 0.0, "calls": 0})

        def call(inputs: list[np.ndarray]) -> list[np.ndarray]:
            t0 = time.perf_counter()
            out = run(inputs)
            row["ms"] += (time.perf_counter() - t0) * 1000
            row["calls"] += 1
            return out

        return call

    def ops() -> dict:
        rows = sorted((r for r in table.values() if r["calls"]), key=lambda r: -r["ms"])
        return {"ops": rows, "total_ms": sum(r["ms"] for r in rows),
                "delegated_ms": sum(r["ms"] for r in rows if r["backend"] == "XNNPACK"),
                "backends": sorted({r["backend"] for r in rows})}

    def restart() -> None:
        for row in table.values():
            row["ms"], row["calls"] = 0.0, 0

    return {m: timed(m, run) for m, run in runs.items()}, OpProfile(ops, restart)


def _signature_nodes(path: Path) -> dict[str, tuple[list[str], int]]:
    """{signature: (its operator names, kernels run outside a delegate)} once the interpreter has
    applied its default delegate (XNNPACK). The interpreter's node API sees the first subgraph only,
    so each signature's subgraph is moved first in a copy of the model; there a DELEGATE node covers
    the nodes between its inputs and its outputs (the interpreter keeps those in its node list, not
    in what it runs)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    def trade_with_first(i: int) -> None:  # subgraphs 0 and i trade places (its own inverse)
        order = list(range(len(model.subgraphs)))
        order[0], order[i] = i, 0
        model.subgraphs = [model.subgraphs[j] for j in order]
        for sig in model.signatureDefs:
            sig.subgraphIndex = order[sig.subgraphIndex]

    model = flatbuffer_utils.read_model_from_bytearray(Path(path).read_bytes())
    found = {}
    for sig in model.signatureDefs:
        i = sig.subgraphIndex
        trade_with_first(i)
        with _quiet():
            interpreter = Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)), num_threads=1)
            interpreter.allocate_tensors()
        w = interpreter._interpreter
        nodes = [(w.NodeName(n), list(w.NodeInputs(n)), list(w.NodeOutputs(n))) for n in range(w.NumNodes())]
        producer = {t: n for n, (name, _, outs) in enumerate(nodes) if name != "DELEGATE" for t in outs}
        covered = set()
        for name, ins, outs in nodes:
            todo = list(outs) if name == "DELEGATE" else []
            while todo:
                t = todo.pop()
                if t not in ins and t in producer and producer[t] not in covered:
                    covered.add(producer[t])
                    todo += nodes[producer[t]][1]
        names = [name for name, _, _ in nodes]
        key = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else sig.signatureKey
        found[key] = names, sum(1 for n, name in enumerate(names) if name != "DELEGATE" and n not in covered)
        trade_with_first(i)  # (undone)
    return found


def stats(directory: Path, files: dict[str, str]) -> dict:
    _interpreter(directory, files, 1)  # (a clear error for a file that does not load)
    found = _signature_nodes(Path(directory) / FILE)
    names = [name for m in files for name in found[m][0]]
    return {"branches": names.count("IF") + names.count("WHILE"), "gathers": names.count("WHERE"),
            "delegates": names.count("DELEGATE"), "kernels": sum(found[m][1] for m in files)}


LITERT = RUNTIMES.register("litert")(Runtime("litert", "ai-edge-litert", "routed", load, profile, stats,
                                             modes=("routed",), dynamic_tokens=False))
