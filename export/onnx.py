"""ONNX / ONNX Runtime: torch.cond becomes If, the ACM gathers NonZero/Gather/ScatterND."""
from __future__ import annotations

import numpy as np
import torch

from edge.errors import EdgeError
from export.runtime import RUNTIMES, Runtime


def lower(ep: torch.export.ExportedProgram, path: str) -> None:
    program = torch.onnx.export(ep, dynamo=True, optimize=True, verbose=False)
    program.save(path)


def load(path: str, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise EdgeError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]}); export it again") from None
    names = [i.name for i in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs)))

    return run


def stats(path: str) -> dict:
    import onnx

    def ops(graph):
        for n in graph.node:
            yield n.op_type
            for a in n.attribute:  # the branches of If are subgraphs
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from ops(a.g)

    found = list(ops(onnx.load(path).graph))
    return {"branches": found.count("If"), "gathers": found.count("NonZero"), "delegates": 0}


ONNX = RUNTIMES.register("onnx")(Runtime("onnx", ".onnx", lower, load, stats))
