"""ONNX / ONNX Runtime: torch.cond becomes If, the ACM gathers NonZero/Gather/ScatterND; in the routed
mode each method is an .onnx file of its own, run by a session of its own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge.errors import EdgeError
from export.runtime import RUNTIMES, Runtime


def file_of(method: str) -> str:
    return "model.onnx" if method == "forward" else f"model.{method}.onnx"


def lower(eps: dict[str, torch.export.ExportedProgram], directory: Path, control_flow: bool) -> dict[str, str]:
    files = {}
    for method, ep in eps.items():
        files[method] = file_of(method)
        torch.onnx.export(ep, dynamo=True, optimize=True, verbose=False).save(str(Path(directory) / files[method]))
    return files


def load(directory: Path, files: dict[str, str], threads: int | None = None) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    runs = {}
    for method, name in files.items():
        path = Path(directory) / name
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise EdgeError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]}); export it again") from None

        def run(inputs: list[np.ndarray], session=session, names=[i.name for i in session.get_inputs()]) -> list[np.ndarray]:
            return session.run(None, dict(zip(names, inputs)))

        runs[method] = run
    return runs


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


ONNX = RUNTIMES.register("onnx")(Runtime("onnx", "graph", lower, load, stats))
