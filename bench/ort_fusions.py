"""Which of ONNX Runtime's session settings make MiniLM slower on this CPU: the dense MiniLM (128 tokens,
edge's ONNX lowering) in ORT's default session (every fusion on) and with each fusion that
device.onnx.SLOW_FUSIONS turns off, off alone, all of them off, and all of them off with ORT's memory
pattern off as well (device.onnx.MEMORY_PATTERN: what edge's sessions run), timed in turn (medians of
--runs calls, 1 thread), as ratios to the default session; the same for MiniLM with ACM FFNs, exits
and a router per layer (graph mode, untrained gates; every gate open, and every ACM at k = 0), against
edge's sessions with the memory pattern on; also the residual Add + LayerNorm of one layer
(1, 128, 384) alone: ORT's fused SkipLayerNormalization against Add + LayerNormalization, so that the
kernels themselves are compared, not a whole model.

    taskset -c 0 .venv/bin/python bench/ort_fusions.py        # ~2 minutes
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

import edge
import export
from export.graph import GraphModel
from device.onnx import MEMORY_PATTERN, SLOW_FUSIONS

sys.path.insert(0, str(Path(__file__).parent))
from export_speed import interleaved  # noqa: E402


def session(model: str | bytes, disabled: list[str], pattern: bool = True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    opts.enable_mem_pattern = pattern
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def residual_norm() -> bytes:
    """y = LayerNorm(x + r) on (1, 128, 384), as an ONNX model ORT fuses to SkipLayerNormalization."""
    d = 384
    shape = [1, 128, d]
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "r"], ["s"]),
         helper.make_node("LayerNormalization", ["s", "w", "b"], ["y"], axis=-1, epsilon=1e-12)], "residual_norm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "r")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.random.rand(d).astype(np.float32), n) for n in ("w", "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9  # what this ONNX Runtime reads
    return m.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = edge.load_pretrained()
    text = " ".join(edge.austen_passages().split("test").texts[:8])
    example = {k: v for k, v in tok([text], padding="max_length", truncation=True, max_length=128,
                                    return_tensors="pt").items() if k in ("input_ids", "attention_mask")}
    off = list(SLOW_FUSIONS)
    settings = {  # model -> setting name -> (fusions off, memory pattern); each model's first setting is its baseline
        "dense": {"default": ([], True), **{f"no {f}": ([f], True) for f in SLOW_FUSIONS}, "no fusions": (off, True),
                  "edge": (off, MEMORY_PATTERN)},
        "gated": {"edge, memory pattern on": (off, True), "edge": (off, MEMORY_PATTERN)}}
    gated = copy.deepcopy(model)
    edge.install_acms(gated, edge.AcmConfig())
    train = edge.batches(tok, edge.austen_passages().split("train").texts[:32], 16)
    gated = edge.add_skips(edge.add_exits(gated, edge.ExitConfig(after=[2, 3, 4, 5], steps=0), train, progress=False),
                           edge.SkipConfig(samples=16), train, progress=False)
    own = GraphModel(gated).knobs()
    never = {**own, "exit_thresholds": torch.ones(4), "skip_thresholds": torch.zeros(6)}  # no exit, no skip
    knobs = {"open": {**never, "gate_bias": own["gate_bias"] - 1e4}, "k0": {**never, "gate_bias": own["gate_bias"] + 1e4}}
    x = [example["input_ids"].numpy(), example["attention_mask"].numpy()]
    feeds = {"dense": {"": x}, "gated": {k: x + [t.numpy() for t in v.values()] for k, v in knobs.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": export.to_runtime(model, "onnx", Path(tmp) / "dense", example, progress=False).path,
                 "gated": export.to_runtime(gated, "onnx", Path(tmp) / "gated", example, progress=False, mode="graph").path}
        cases = {}
        for m, path in paths.items():
            for name, (disabled, pattern) in settings[m].items():
                s = session(str(path / "model.onnx"), disabled, pattern)
                for level, feed in feeds[m].items():
                    named = dict(zip([i.name for i in s.get_inputs()], feed))
                    cases[(m, level, name)] = lambda s=s, named=named: s.run(None, named)
        ms = interleaved(cases, args.runs)
    rn = residual_norm()
    xr = {n: np.random.rand(1, 128, 384).astype(np.float32) for n in ("x", "r")}
    kernel = interleaved({name: (lambda s=session(rn, off): s.run(None, xr))
                          for name, off in {"fused": [], "unfused": ["SkipLayerNormFusion"]}.items()}, args.runs * 5)
    base = {(m, level): v for (m, level, name), v in ms.items() if name == next(iter(settings[m]))}
    ratios = {}
    for (m, level, name), v in ms.items():
        ratios[f"{m}{' ' + level if level else ''}: {name}"] = round(v / base[(m, level)], 4)
        print(f"MiniLM {m:5s} {level:4s}  {name:28s} {v:8.3f} ms  {v / base[(m, level)]:.3f}x "
              f"{next(iter(settings[m]))}")
    for name, v in kernel.items():
        print(f"Add + LayerNorm (1, 128, 384) {name:8s} {v * 1e3:8.1f} us")
    print(json.dumps({"minilm_ratio": ratios,
                      "residual_norm_us": {k: round(v * 1e3, 1) for k, v in kernel.items()},
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
