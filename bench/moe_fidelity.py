"""sigma-MoE against ACM at equal FFN FLOPs (issue 39), on all-MiniLM-L6-v2 and its novel task (the linear
probe fitted on the ORIGINAL model's embeddings, applied unchanged; the whole test split), one run:

  moe-topk      edge.moefy, mode "topk": every token runs its K best-scored experts (the paper's);
  moe-adaptive  edge.moefy, mode "adaptive": a token runs the experts whose sigmoid gate is open, the bias
                calibrated to the budget (a per-token count);
  acm           edge.acmize at the budget (its defaults);
  static        the adaptive model's experts, every token of a layer running the same ones: the K experts
                with the highest mean router score on calibration data, K the most within the budget
                (no router runs).
Each at every --budgets value, converted in the default time: the budget-independent phases once (acmize's
phases 1-2; moefy's grouping and routers, the same for both modes), then the end-to-end phase and
calibration at each budget (edge.retarget: exactly what acmize / moefy at that budget run). convert_seconds
counts both. cos is the sentence embedding's cosine to the original's (mean, 5th percentile); achieved: the
FFN FLOP fraction measured on the test split.

Not measured here yet: the exported times (the MoE export is not built); those JSON fields are null.

    .venv/bin/python bench/moe_fidelity.py            # ~45 minutes on 2 cores (Intel Xeon, bf16)
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import edge
from edge.arch import arch_for
from edge.evaluate import compare
from edge.moe import moe_modules, set_mode_

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402

METHODS = ("moe-topk", "moe-adaptive", "acm", "static")


def set_static_(model, calib: list[dict], budget: float) -> None:
    """Every token of a MoE layer runs the same experts: those of highest mean router score on the real
    tokens of `calib`, as many as fit in `budget` of the FFN's FLOPs (no router runs)."""
    arch, moes = arch_for(model), moe_modules(model)
    sums, seen = [torch.zeros(m.n) for m in moes], []
    hooks = [m.register_forward_hook(lambda mod, a, o, i=i: seen.append((i, mod.gate_logits(a[0]))))
             for i, m in enumerate(moes)]
    try:
        with torch.no_grad():
            for b in calib:
                seen.clear()
                arch.output(model, b)
                for i, scores in seen:
                    sums[i] += scores[arch.token_mask(b, scores.shape)].sum(0)
    finally:
        for h in hooks:
            h.remove()
    for m, s in zip(moes, sums):
        k = max(k for k in range(m.n + 1) if k * m.unit_flops() <= budget * m.ffn_flops())
        m.forced = torch.zeros(m.n, dtype=torch.bool)
        m.forced[s.topk(k).indices] = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--experts", type=int, default=edge.MoeConfig.experts)
    ap.add_argument("--test-limit", type=int, default=None, help="the first N test passages (default: all)")
    ap.add_argument("--train-limit", type=int, default=None, help="the first N train passages (default: all)")
    ap.add_argument("--gate-steps", type=int, default=edge.DistillConfig.gate_steps)
    ap.add_argument("--e2e-steps", type=int, default=edge.DistillConfig.e2e_steps)
    ap.add_argument("--repr-steps", type=int, default=edge.DistillConfig.repr_steps)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    train = edge.batches(tok, passages.split("train").texts[:args.train_limit], 32)
    calib = edge.batches(tok, passages.split("calib").texts[:512], 64)
    test_b, teacher_out, probe, y, share = held_out(model, tok, passages, args.test_limit)
    acc_teacher = probe.accuracy(teacher_out, y)
    print(f"original: probe accuracy {acc_teacher:.4f}; FFNs are {share:.3f} of the model FLOPs", flush=True)
    distill = edge.DistillConfig(repr_steps=args.repr_steps, gate_steps=args.gate_steps,
                                 e2e_steps=args.e2e_steps).resolved()
    print(f"training in {distill.precision}: {distill.repr_steps} / {distill.gate_steps} / {distill.e2e_steps} "
          f"steps", flush=True)
    first = replace(distill, e2e_steps=0)
    bases, base_seconds = {}, {}
    if "acm" in args.methods:
        t = time.time()
        bases["acm"] = edge.acmize(model, edge.AcmConfig(budget=1.0), train, calib, first)
        base_seconds["acm"] = time.time() - t
    if {"moe-topk", "moe-adaptive", "static"} & set(args.methods):
        t = time.time()
        bases["moe"] = edge.moefy(model, edge.MoeConfig(budget=1.0, experts=args.experts), train, calib, first)
        base_seconds["moe"] = time.time() - t

    rows = []

    def record(method, budget, m, seconds):
        rep, out = compare(m, teacher_out, test_b, share)
        row = {"budget": budget, "method": method, "achieved": rep["ffn_fraction"], "cos_mean": rep["cos_mean"],
               "cos_p5": rep["cos_p5"], "acc": probe.accuracy(out, y), "convert_seconds": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for budget in args.budgets:
        adaptive = None
        for method in [m for m in METHODS if m in args.methods and m != "static"]:
            base = bases["acm" if method == "acm" else "moe"]
            if method != "acm":
                base = copy.deepcopy(base)
                set_mode_(base, method.removeprefix("moe-"))
            t = time.time()
            m = edge.retarget(base, model, budget, train, calib, distill)
            record(method, budget, m, base_seconds["acm" if method == "acm" else "moe"] + time.time() - t)
            if method == "moe-adaptive":
                adaptive = m
        if "static" in args.methods:
            if adaptive is None:  # (the static baseline's experts are the adaptive model's)
                base = copy.deepcopy(bases["moe"])
                set_mode_(base, "adaptive")
                adaptive = edge.retarget(base, model, budget, train, calib, distill)
            static = copy.deepcopy(adaptive)
            set_static_(static, calib, budget)
            record("static", budget, static, None)

    print(f"{'budget':>6} {'method':>13} {'achieved':>8} {'cos':>7} {'cos_p5':>7} {'acc':>7} {'seconds':>7}"
          f"   (original acc {acc_teacher:.4f}; {edge.__name__} on {distill.precision})")
    for r in rows:
        secs = "" if r["convert_seconds"] is None else f"{r['convert_seconds']:.0f}"
        print(f"{r['budget']:>6} {r['method']:>13} {r['achieved']:>8.3f} {r['cos_mean']:>7.4f} {r['cos_p5']:>7.4f} "
              f"{r['acc']:>7.4f} {secs:>7}")
    none = [None] * len(rows)
    print(json.dumps({"budget": [r["budget"] for r in rows], "method": [r["method"] for r in rows],
                      "achieved": [r["achieved"] for r in rows], "cos_mean": [r["cos_mean"] for r in rows],
                      "cos_p5": [r["cos_p5"] for r in rows], "acc": [r["acc"] for r in rows],
                      "acc_teacher": acc_teacher, "convert_seconds": [r["convert_seconds"] for r in rows],
                      "experts": args.experts, "precision": distill.precision,
                      "ffn_ratio_executorch": none, "model_ratio_executorch": none,
                      "ffn_ratio_onnx": none, "model_ratio_onnx": none}))


if __name__ == "__main__":
    main()
