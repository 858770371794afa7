"""What each gate type costs on its own, for one runtime and mode: MiniLM (128 tokens) exported with
ACM FFNs only (every learner open, and k = 0 for every token), with exits only (after layers 2-5,
never taken), with skip routers only (one per layer, never skipping) and with all three (every gate
open, and k = 0), each as a ratio to the dense export of the same lowering, all timed in turn
(medians of --runs calls, 1 thread). bench/export_speed.py times the whole gated model at its
operating points; this one says which kind of gate the overhead of keeping the control flow comes
from (noffn: the dense model without its FFNs, for scale). The gates are untrained: only their cost
is measured, never their choices.

    taskset -c 0 .venv/bin/python bench/gate_cost.py --runtime onnx --mode graph          # ~2 minutes
    taskset -c 0 .venv/bin/python bench/gate_cost.py --runtime executorch --mode graph --runs 20
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
import torch

import edge
import export
from export.graph import GraphModel
from edge.acm import FORCE
from export.checks import force_cases

sys.path.insert(0, str(Path(__file__).parent))
from export_speed import interleaved, without_ffn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", default="onnx", choices=export.RUNTIMES.names())
    ap.add_argument("--mode", default=None, choices=export.MODES, help="default: the runtime's own")
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tok = edge.load_pretrained()
    text = " ".join(edge.austen_passages().split("test").texts[:8])
    example = {k: v for k, v in tok([text], padding="max_length", truncation=True, max_length=128,
                                    return_tensors="pt").items() if k in ("input_ids", "attention_mask")}
    train = edge.batches(tok, edge.austen_passages().split("train").texts[:64], 16)

    def gated(acm=False, exits=False, skips=False):
        m = copy.deepcopy(model)
        if acm:
            edge.install_acms(m, edge.AcmConfig())
        if exits:
            m = edge.add_exits(m, edge.ExitConfig(after=[2, 3, 4, 5], steps=0), train, progress=False)
        return edge.add_skips(m, edge.SkipConfig(samples=32), train, progress=False) if skips else m

    models = {"dense": model, "noffn": without_ffn(model), "acm": gated(acm=True), "exits": gated(exits=True),
              "skips": gated(skips=True), "all": gated(acm=True, exits=True, skips=True)}
    x = [example["input_ids"].numpy(), example["attention_mask"].numpy()]
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            a = export.to_runtime(m, args.runtime, Path(tmp) / name, example, progress=False, mode=args.mode)
            run = a.runner(threads=1)
            full = dict(force_cases(GraphModel(m)))["full"]  # no exit taken, no skip
            settings = ({" open": {**full, "gate_bias": full["gate_bias"] - FORCE},
                         " k0": {**full, "gate_bias": full["gate_bias"] + FORCE}} if "gate_bias" in full else {"": full})
            for label, knobs in settings.items():
                feeds = x + [v.numpy().astype(np.float32) for v in knobs.values()]
                cases[name + label] = lambda run=run, feeds=feeds: run(feeds)
        ms = interleaved(cases, args.runs)
    for name, v in ms.items():
        print(f"{name:10s} {v:8.3f} ms  {v / ms['dense']:.3f}x dense")
    mode = args.mode or export.RUNTIMES.get(args.runtime).mode
    print(json.dumps({"runtime": args.runtime, "mode": mode, "runs": args.runs,
                      "ratio": {k: round(v / ms["dense"], 4) for k, v in ms.items()}}))


if __name__ == "__main__":
    main()
