"""Which of ONNX Runtime's graph fusions make MiniLM slower on this CPU: the dense MiniLM (128 tokens,
edge's ONNX lowering) in ORT's default session (every fusion on) and with each fusion that
export.onnx.SLOW_FUSIONS turns off, off alone, and all of them off (what edge's sessions run), timed
in turn (medians of --runs calls, 1 thread), as ratios to the default session; also the residual
Add + LayerNorm of one layer (1, 128, 384) alone: ORT's fused SkipLayerNormalization against
Add + LayerNormalization, so that the kernels themselves are compared, not a whole model.

    taskset -c 0 .venv/bin/python bench/ort_fusions.py        # ~1 minute
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
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
from export.onnx import SLOW_FUSIONS

sys.path.insert(0, str(Path(__file__).parent))
from export_speed import interleaved  # noqa: E402


def session(model: str | bytes, disabled: list[str]):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
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
    settings = {"default": [], **{f"no {f}": [f] for f in SLOW_FUSIONS}, "edge": list(SLOW_FUSIONS)}
    with tempfile.TemporaryDirectory() as tmp:
        art = export.to_runtime(model, "onnx", Path(tmp) / "dense", example, progress=False)
        path = str(art.path / "model.onnx")
        x = [example["input_ids"].numpy(), example["attention_mask"].numpy()]
        sessions = {name: session(path, off) for name, off in settings.items()}
        ms = interleaved({name: (lambda s=s: s.run(None, dict(zip([i.name for i in s.get_inputs()], x))))
                          for name, s in sessions.items()}, args.runs)
    rn = residual_norm()
    xr = {n: np.random.rand(1, 128, 384).astype(np.float32) for n in ("x", "r")}
    kernel = interleaved({name: (lambda s=session(rn, off): s.run(None, xr))
                          for name, off in {"fused": [], "unfused": ["SkipLayerNormFusion"]}.items()}, args.runs * 5)
    for name, v in ms.items():
        print(f"MiniLM  {name:28s} {v:8.3f} ms  {v / ms['default']:.3f}x default")
    for name, v in kernel.items():
        print(f"Add + LayerNorm (1, 128, 384) {name:8s} {v * 1e3:8.1f} us")
    print(json.dumps({"minilm_ratio": {k: round(v / ms["default"], 4) for k, v in ms.items()},
                      "residual_norm_us": {k: round(v * 1e3, 1) for k, v in kernel.items()},
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
