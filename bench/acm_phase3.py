"""Phase 3 (end-to-end) variants at budget 0.5, measured side by side in one run.

Phases 1 and 2 run once (defaults, 4 learners); then each variant runs phase 3 and calibration from
the same start (edge.retarget) and is scored on held-out Austen passages: the cosine of the sentence
embedding to the original MiniLM's (mean, 5th percentile), the achieved FFN fraction and the seconds.

    .venv/bin/python bench/acm_phase3.py                      # every variant: about 75 minutes on 2 cores
    .venv/bin/python bench/acm_phase3.py default "e2e lr 3e-4"  # some of them
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import edge
from acm_choices import austen  # (bench/ is the script's directory)
from edge.evaluate import compare

VARIANTS = {"default": {},  # (backbone tuned, e2e lr 1e-4, hidden 0.1)
            "e2e lr 2e-4": dict(e2e_lr=2e-4),
            "e2e lr 3e-4": dict(e2e_lr=3e-4),
            "learners only, lr 3e-4": dict(e2e_lr=3e-4, tune_backbone=False),
            "hidden 0": dict(hidden_weight=0.0),
            "hidden 0.3": dict(hidden_weight=0.3),
            "hidden 1": dict(hidden_weight=1.0),
            "e2e 1200 steps": dict(e2e_steps=1200)}  # 3x the bf16 default: what the 15-minute limit costs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    model, train, calib, test, teacher_out = austen(768)
    shared = edge.acmize(model, edge.AcmConfig(budget=1.0), train, calib, edge.DistillConfig(e2e_steps=0),
                         progress=False)
    result = {}
    for name in args.variants:
        kw = VARIANTS[name]
        t0 = time.time()
        acm = edge.retarget(shared, model, 0.5, train, calib, edge.DistillConfig(**kw), progress=False)
        seconds = time.time() - t0
        rep, _ = compare(acm, teacher_out, test)
        result[name] = {"cos_mean": round(rep["cos_mean"], 4), "cos_p5": round(rep["cos_p5"], 4),
                        "achieved": round(rep["ffn_fraction"], 4), "phase3_seconds": round(seconds, 1)}
        print(name, json.dumps(result[name]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
