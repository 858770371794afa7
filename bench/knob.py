"""The whole budget knob of ONE conversion (issue 37): MiniLM converted once (`edge acmize` at the default
settings; or --acm DIR, a model it wrote), then set to each budget with the knob only
(edge.calibrate_budget_ on 256 calibration passages); on the whole test split: the achieved FFN fraction,
the cosine of the sentence embedding to the original's (mean, 5th percentile), and the novel-task accuracy
of a linear probe fitted on the ORIGINAL model's embeddings and applied unchanged.
With --per-budget (not with --acm), beside it: today's recipe converted for each budget separately, the
per-budget reference (phases 1-2 run once, then edge.retarget to each budget: exactly what `edge acmize
--budget B` trains, bench/acm_fidelity.py's method).

    .venv/bin/python bench/knob.py                          # converts (~15 minutes on 2 cores), then ~10
    .venv/bin/python bench/knob.py --acm out/minilm-acm     # `edge demo`'s conversion
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import edge
from edge.evaluate import compare
from edge.parts import parts

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402

BUDGETS = (1.0, 0.75, 0.5, 0.35, 0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acm", type=Path, metavar="DIR", help="a converted MiniLM (edge acmize); default: convert now")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--per-budget", action="store_true", help="also convert for each budget separately (slow)")
    ap.add_argument("--test-limit", type=int, default=None, help="the first N test passages (default: all)")
    args = ap.parse_args()
    if args.acm and args.per_budget:
        raise SystemExit("knob.py: --per-budget converts from phases 1-2, which a saved model does not keep; drop --acm")
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    train = edge.batches(tok, passages.split("train").texts, 32)
    convert_calib = edge.batches(tok, passages.split("calib").texts[:512], 64)  # (edge acmize's default)
    calib = edge.batches(tok, passages.split("calib").texts[:256], 64)  # (the knob's)
    test_b, teacher_out, probe, y, share = held_out(model, tok, passages, args.test_limit)
    acc_teacher = probe.accuracy(teacher_out, y)
    convert_seconds, shared = None, None
    if args.acm:
        try:
            acm = edge.load(args.acm)
        except edge.EdgeError as e:
            raise SystemExit(f"knob.py: {e}") from None
    else:
        t0 = time.time()  # (acmize is phases 1-2 and then retarget to its budget: the same, with phases 1-2 kept)
        shared = edge.acmize(model, edge.AcmConfig(budget=1.0), train, convert_calib, edge.DistillConfig(e2e_steps=0))
        acm = edge.retarget(shared, model, edge.AcmConfig().budget, train, convert_calib)
        convert_seconds = round(time.time() - t0, 1)
    rows = []
    for budget in args.budgets:
        knobbed = copy.deepcopy(acm)
        edge.calibrate_budget_(knobbed, calib, budget)
        rep, out = compare(knobbed, teacher_out, test_b, share)
        row = {"budget": budget, "achieved": round(rep["ffn_fraction"], 4), "cos_mean": round(rep["cos_mean"], 5),
               "cos_p5": round(rep["cos_p5"], 5), "acc": round(probe.accuracy(out, y), 4)}
        if args.per_budget:
            own = edge.retarget(shared, model, budget, train, convert_calib)
            rep_own, _ = compare(own, teacher_out, test_b, share)
            row["cos_mean_per_budget_conversion"] = round(rep_own["cos_mean"], 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"budget": [r["budget"] for r in rows], "achieved": [r["achieved"] for r in rows],
                      "cos_mean": [r["cos_mean"] for r in rows], "cos_p5": [r["cos_p5"] for r in rows],
                      "acc": [r["acc"] for r in rows], "acc_teacher": round(acc_teacher, 4),
                      "cos_mean_per_budget_conversion": [r.get("cos_mean_per_budget_conversion") for r in rows],
                      "convert_seconds": convert_seconds, "passages": len(y),
                      "trained_budget": parts(acm).config("acm").budget}))


if __name__ == "__main__":
    main()
