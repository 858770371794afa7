"""Phase 1 (representation distillation) variants: learning rate and steps, at budget 0.5.

Each variant runs phases 1 and 2 (no phase 3) from the same start and is scored on held-out Austen
passages: the cosine of the sentence embedding to the original MiniLM's with the adaptive gates at
0.5 of the FFN (mean, 5th percentile) and with every token at k = 1..N learners (static), and the
seconds. Phase 3 starts from what phase 1 leaves: a better start here is a better model there.

    .venv/bin/python bench/acm_phase1.py                      # every variant: about 40 minutes on 2 cores
    .venv/bin/python bench/acm_phase1.py "lr 3e-4" "lr 2e-3"  # some of them
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import edge
from acm_choices import austen, static_cosines  # (bench/ is the script's directory)
from edge.evaluate import compare

FP32 = dict(precision="fp32", repr_steps=250)  # (the defaults until bf16 came)
VARIANTS = {"lr 3e-4": {**FP32, "lr": 3e-4}, "lr 1e-3": {**FP32, "lr": 1e-3}, "lr 2e-3": FP32,
            "lr 3e-3": {**FP32, "lr": 3e-3}, "lr 3e-4, 1000 steps": {**FP32, "lr": 3e-4, "repr_steps": 1000},
            "bf16": dict(precision="bf16", repr_steps=250), "bf16, 500 steps": dict(precision="bf16", repr_steps=500)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    model, train, calib, test, teacher_out = austen(768)
    result = {}
    for name in args.variants:
        t0 = time.time()
        acm = edge.acmize(model, edge.AcmConfig(budget=0.5), train, calib,
                          edge.DistillConfig(e2e_steps=0, **VARIANTS[name]), progress=False)
        seconds = time.time() - t0
        rep, _ = compare(acm, teacher_out, test)
        static = [round(c, 4) for c in static_cosines(acm, teacher_out, test)]
        result[name] = {"cos_adaptive_0.5": round(rep["cos_mean"], 4), "cos_p5": round(rep["cos_p5"], 4),
                        "achieved": round(rep["ffn_fraction"], 4), "cos_static_k": static,
                        "seconds": round(seconds, 1)}
        print(name, json.dumps(result[name]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
