"""ACM fidelity on all-MiniLM-L6-v2 and real held-out text (Jane Austen), one run, side by side.

MiniLM converted ONCE (at --budget, default 0.5, the default knob), then set to each budget 1.0, 0.75,
0.5, 0.35, 0.25 of the FFN FLOPs with the knob alone (edge.evaluate.knob_curve): the achieved budget, the
cosine of the sentence embedding to the original model's (mean and 5th percentile), the accuracy of a
linear probe (which novel a passage comes from) fitted on the ORIGINAL model's embeddings and applied
unchanged, and the static baseline at equal FLOPs (every token of a layer runs the same number of
learners; the better of the phase-1-only learners and the converted ones). Also: the conversion's wall
time and the eager speed-up of the model at 0.5 over itself at 1.0 (batch 1, interleaved runs, ratio of
medians). bench/knob.py adds the per-budget conversions beside the curve.

    .venv/bin/python bench/acm_fidelity.py            # about 25 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace

import torch

import edge
from edge.acm import acm_modules
from edge.arch import arch_for
from edge.budget import KNOB
from edge.evaluate import ffn_share_of_model, knob_curve, outputs, teacher_probe
from edge.flops import learner_flops, ffn_flops

BUDGETS = KNOB


def set_static_(model, fraction: float) -> None:
    """Every token of module i runs k_i learners; sum of k_i matches `fraction` of the FFN FLOPs."""
    acms = acm_modules(model)
    units = round(fraction * sum(ffn_flops(a) for a in acms) / learner_flops(acms[0]))
    base, extra = divmod(units, len(acms))
    for i, a in enumerate(acms):
        a.forced_k = min(a.n, base + (i < extra))


def clear_static_(model) -> None:
    for a in acm_modules(model):
        a.forced_k = None


def held_out(model, tok, passages, limit: int | None = None):
    """(test batches, the original's outputs on them, the probe fitted on the original, the test labels,
    the FFNs' share of the model FLOPs): what the benches compare a converted model with, on the test
    split (its first `limit` passages)."""
    test = passages.split("test")
    if limit:
        test = test.head(limit)
    test_b = edge.batches(tok, test.texts, 64)
    teacher_out, _ = outputs(model, test_b)
    return (test_b, teacher_out, teacher_probe(model, tok, passages), torch.tensor(test.labels),
            ffn_share_of_model(model, test_b[0]))


def eager_times(models: dict, batches: list[dict], repeats: int = 3) -> dict:
    """Median seconds per batch for each model, runs interleaved so that noise hits all alike."""
    times = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(repeats):
            for b in batches:
                for name, m in models.items():
                    arch = arch_for(m)
                    t = time.perf_counter()
                    arch.output(m, b)
                    times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS), help="the knob positions measured")
    ap.add_argument("--budget", type=float, default=edge.AcmConfig.budget, help="the conversion's target budget")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--repr-steps", type=int, default=edge.DistillConfig.repr_steps)
    ap.add_argument("--gate-steps", type=int, default=edge.DistillConfig.gate_steps)
    ap.add_argument("--e2e-steps", type=int, default=edge.DistillConfig.e2e_steps)
    ap.add_argument("--learners", type=int, default=edge.AcmConfig.learners, help="learners per ACM")
    ap.add_argument("--precision", default=edge.DistillConfig.precision, help="of the training passes (fp32, bf16)")
    ap.add_argument("--save", metavar="DIR", help="also save the converted model to DIR (bench/depth.py --acm DIR "
                    "reuses it)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    train = edge.batches(tok, passages.split("train").texts, 32)
    calib = edge.batches(tok, passages.split("calib").texts[:512], 64)
    test_b, teacher_out, probe, y, share = held_out(model, tok, passages, args.test_limit)
    acc_teacher = probe.accuracy(teacher_out, y)
    print(f"original: probe accuracy {acc_teacher:.4f}; FFNs are {share:.3f} of the model FLOPs", flush=True)

    distill = edge.DistillConfig(repr_steps=args.repr_steps, gate_steps=args.gate_steps, e2e_steps=args.e2e_steps,
                                 precision=args.precision)
    # phases 1-2, then phase 3 and calibration at the target (edge.retarget): exactly `edge acmize --budget B`,
    # with the phase-1 learners kept for the static baseline
    t0 = time.time()
    phase1 = edge.acmize(model, edge.AcmConfig(budget=1.0, learners=args.learners), train, calib,
                         replace(distill, e2e_steps=0), progress=True)
    acm = edge.retarget(phase1, model, args.budget, train, calib, distill, progress=True)
    convert_seconds = time.time() - t0
    if args.save:
        edge.save(acm, args.save, tokenizer=tok, overwrite=True)
    knob_calib = calib[:4]  # (256 passages, as bench/knob.py)
    rows, models = [], {}
    for row in knob_curve(acm, teacher_out, test_b, knob_calib, args.budgets, share, lambda o: probe.accuracy(o, y)):
        static_accs = []
        for learners in (phase1, acm):
            set_static_(learners, row["achieved"])
            static_accs.append(probe.accuracy(outputs(learners, test_b)[0], y))
            clear_static_(learners)
        row.update(acc_static=max(static_accs), acc_static_phase1=static_accs[0], acc_static_converted=static_accs[1])
        rows.append(row)
        print(json.dumps(row), flush=True)

    speedup = None
    if {0.5, 1.0} <= set(args.budgets):
        for b in (0.5, 1.0):
            models[b] = copy.deepcopy(acm)
            edge.calibrate_budget_(models[b], knob_calib, b)
        single = edge.batches(tok, passages.split("test").texts[:args.test_limit][:150], 1)
        t = eager_times({"1.0": models[1.0], "0.5": models[0.5], "original": model}, single)
        speedup = t["1.0"] / t["0.5"]
        print(f"eager batch-1 medians: original {t['original'] * 1e3:.2f} ms, ACM@1.0 {t['1.0'] * 1e3:.2f} ms, "
              f"ACM@0.5 {t['0.5'] * 1e3:.2f} ms", flush=True)

    print(f"{'budget':>7} {'achieved':>8} {'cos':>7} {'cos_p5':>7} {'acc':>7} {'static':>7}   (original acc {acc_teacher:.4f})")
    for r in rows:
        print(f"{r['budget']:>7} {r['achieved']:>8.3f} {r['cos_mean']:>7.4f} {r['cos_p5']:>7.4f} {r['acc']:>7.4f} "
              f"{r['acc_static']:>7.4f}")
    print(json.dumps({"budgets": [r["budget"] for r in rows], "achieved": [r["achieved"] for r in rows],
                      "cos_mean": [r["cos_mean"] for r in rows], "cos_p5": [r["cos_p5"] for r in rows],
                      "acc": [r["acc"] for r in rows], "acc_static": [r["acc_static"] for r in rows],
                      "acc_teacher": acc_teacher, "convert_seconds": convert_seconds, "trained_budget": args.budget,
                      "eager_speedup_at_0.5": speedup}))


if __name__ == "__main__":
    main()
