"""The whole budget knob of ONE conversion (issue 37): MiniLM converted once (`edge acmize` at the default
settings; or --acm DIR, a model it wrote), then set to each budget with the knob only
(edge.calibrate_budget_ on 256 calibration passages); on the whole test split: the achieved FFN fraction,
the cosine of the sentence embedding to the original's (mean, 5th percentile), and the novel-task accuracy
of a linear probe fitted on the ORIGINAL model's embeddings and applied unchanged.
With --per-budget, beside it: the recipe before issue 37 (TODAY) converted for each budget separately, the
per-budget reference (its phases 1-2 once, then edge.retarget to each budget: exactly what `edge acmize
--budget B` trained, bench/acm_fidelity.py's method then).

    .venv/bin/python bench/knob.py --save out/knob-acm       # converts (~12 minutes on 2 cores), then ~2
    .venv/bin/python bench/knob.py --acm out/minilm-acm     # `edge demo`'s conversion
    .venv/bin/python bench/knob.py --acm out/knob-acm --per-budget   # and the reference, ~30 minutes more
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import edge
from edge.budget import KNOB
from edge.evaluate import compare, knob_curve
from edge.parts import parts

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402

BUDGETS = KNOB
# the recipe before issue 37 (the per-budget reference): phase 3 at the target alone, the backbone tuned, the
# last prefix weighted as any other in phase 1
TODAY = {"knob": (), "top_weight": 1.0, "tune_backbone": True}
TODAY_ACM = {"exact_top": False}  # k = N ran every learner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acm", type=Path, metavar="DIR", help="a converted MiniLM (edge acmize); default: convert now")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--per-budget", action="store_true",
                    help="also today's recipe (TODAY: phase 3 at the target alone) converted for each budget (slow)")
    ap.add_argument("--save", type=Path, metavar="DIR", help="save the conversion to DIR (then --acm DIR reuses it)")
    ap.add_argument("--test-limit", type=int, default=None, help="the first N test passages (default: all)")
    ap.add_argument("--distill", type=json.loads, default={}, metavar="JSON",
                    help='DistillConfig fields of the conversion, e.g. \'{"tune_backbone": false}\'')
    args = ap.parse_args()
    try:
        distill = edge.DistillConfig(**args.distill)
    except (edge.EdgeError, TypeError) as e:
        raise SystemExit(f"knob.py: --distill: {e}") from None
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    train = edge.batches(tok, passages.split("train").texts, 32)
    convert_calib = edge.batches(tok, passages.split("calib").texts[:512], 64)  # (edge acmize's default)
    calib = edge.batches(tok, passages.split("calib").texts[:256], 64)  # (the knob's)
    test_b, teacher_out, probe, y, share = held_out(model, tok, passages, args.test_limit)
    acc_teacher = probe.accuracy(teacher_out, y)
    convert_seconds = None
    if args.acm:
        try:
            acm = edge.load(args.acm)
        except edge.EdgeError as e:
            raise SystemExit(f"knob.py: {e}") from None
    else:
        t0 = time.time()  # (acmize is phases 1-2 and then retarget to its budget: the same, with phases 1-2 kept)
        shared = edge.acmize(model, edge.AcmConfig(budget=1.0), train, convert_calib, replace(distill, e2e_steps=0))
        acm = edge.retarget(shared, model, edge.AcmConfig().budget, train, convert_calib, distill)
        convert_seconds = round(time.time() - t0, 1)
        if args.save:
            edge.save(acm, args.save, tokenizer=tok)
    if args.per_budget:  # today's recipe: its own phases 1-2, then phase 3 for each budget alone (edge.retarget)
        reference = replace(distill, **TODAY)
        shared = edge.acmize(model, edge.AcmConfig(budget=1.0, **TODAY_ACM), train, convert_calib,
                             replace(reference, e2e_steps=0))
    rows = knob_curve(acm, teacher_out, test_b, calib, args.budgets, share, lambda out: probe.accuracy(out, y))
    for row in rows:
        if args.per_budget:  # today's recipe converted for this budget alone
            own = edge.retarget(shared, model, row["budget"], train, convert_calib, reference)
            row["cos_mean_per_budget_conversion"] = compare(own, teacher_out, test_b, share)[0]["cos_mean"]
        print(json.dumps(row), flush=True)
    rows = [{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(json.dumps({"budget": [r["budget"] for r in rows], "achieved": [r["achieved"] for r in rows],
                      "cos_mean": [r["cos_mean"] for r in rows], "cos_p5": [r["cos_p5"] for r in rows],
                      "acc": [r["acc"] for r in rows], "acc_teacher": round(acc_teacher, 4),
                      "cos_mean_per_budget_conversion": [r.get("cos_mean_per_budget_conversion") for r in rows],
                      "convert_seconds": convert_seconds, "passages": len(y),
                      "trained_budget": parts(acm).config("acm").budget, "distill": args.distill}))


if __name__ == "__main__":
    main()
