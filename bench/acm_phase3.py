"""Phase 3 (end-to-end) variants at budget 0.5, measured side by side in one run.

Phases 1 and 2 run once (defaults, 4 learners); then each variant runs phase 3 and calibration from
the same start (edge.retarget) and is scored on held-out Austen passages: the cosine of the sentence
embedding to the original MiniLM's (mean, 5th percentile), the achieved FFN fraction and the seconds.

    .venv/bin/python bench/acm_phase3.py             # about 30 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import json
import time

import edge
from acm_choices import austen  # (bench/ is the script's directory)
from edge.evaluate import compare

VARIANTS = {"default": {},
            "learner lr 3e-4, hidden 0.1": dict(e2e_lr=3e-4, hidden_weight=0.1),
            "backbone too, lr 1e-4, hidden 0.1": dict(e2e_lr=1e-4, hidden_weight=0.1, tune_backbone=True)}


def main():
    model, train, calib, test, teacher_out = austen(768)
    shared = edge.acmize(model, edge.AcmConfig(budget=1.0), train, calib, edge.DistillConfig(e2e_steps=0),
                         progress=False)
    result = {}
    for name, kw in VARIANTS.items():
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
