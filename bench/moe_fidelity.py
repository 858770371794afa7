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

Exported (at --export-budget, 0.5; moe-topk, moe-adaptive and acm; the static baseline is not exported:
in the program its router would run): each model in its runtime's default mode (ExecuTorch: routed,
and a MoE in the graph mode too, the *_graph keys; ONNX Runtime: graph), 128 tokens, 1 thread, timed at its own
setting and with no unit run (its knob closed: no learner, no expert) beside the dense original in one
run (export_speed's forms): ffn_ratio = (own - closed) / (dense - closed), model_ratio = own / dense.
ExecuTorch through the native runner (one process, the artifacts' budget levels in turn), ONNX Runtime
in Python, each on 1 thread (the conversions use both cores: convert_seconds is on 2).

    .venv/bin/python bench/moe_fidelity.py --save /tmp/moe      # ~80 minutes on 2 cores (Intel Xeon, bf16)
    .venv/bin/python bench/moe_fidelity.py --load /tmp/moe      # the saved models: the fidelity and exports only
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import edge
import export
from edge.arch import arch_for
from edge.evaluate import compare
from device.measure import knob_arrays, machine
from edge.moe import FORCE, moe_modules, set_mode_
from export.graph import GraphModel

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402
from export_speed import interleaved, native_medians, text_example  # noqa: E402

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


def closed(name: str, value: torch.Tensor) -> torch.Tensor:
    """A knob with no unit run: every ACM's gate bias forced to k = 0, every MoE's experts priced out."""
    if name == "gate_bias":
        return value + FORCE
    value = value.clone()
    value[:, 1:] = FORCE
    return value


def export_ratios(models: dict, original, example: dict, runs: int, tmp: Path) -> dict:
    """{method: {ffn_ratio_<rt>, model_ratio_<rt>, mode_<rt>}} for executorch (native runner) and onnx, each
    model in the runtime's default mode for it; a MoE on ExecuTorch in the graph mode too (<key>_graph:
    the measurement behind its default)."""
    got = {method: {} for method in models}
    x = [example[n].numpy() for n in ("input_ids", "attention_mask")]
    for rt in ("executorch", "onnx"):
        dense = export.to_runtime(original, rt, tmp / f"dense-{rt}", example, progress=False)
        arts = {}
        for method, m in models.items():
            own = GraphModel(m).knobs()
            for mode in [None] + (["graph"] if rt == "executorch" and method.startswith("moe") else []):
                key = method if mode is None else f"{method}_{mode}"
                levels = [{"name": f"{key}:{case}", **{k: (v if case == "own" else closed(k, v)).reshape(-1).tolist()
                                                       for k, v in own.items()}} for case in ("own", "closed")]
                t = time.time()
                arts[key] = export.to_runtime(m, rt, tmp / f"{key}-{rt}", example, progress=False, levels=levels, mode=mode)
                print(f"{rt}: {method} exported ({arts[key].plan['mode']} mode) and checked on "
                      f"{len(arts[key].plan['checks'])} cases in {time.time() - t:.0f} s", flush=True)
        if rt == "executorch":
            ms = native_medians({"dense": dense.path}, [a.path for a in arts.values()], runs)
        else:
            cases = {"dense": (lambda r=dense.runner(threads=1): r(x))}
            for method, a in arts.items():
                run = a.runner(threads=1)
                for level in a.plan["budget_levels"]:
                    cases[level["name"]] = (lambda r=run, v=knob_arrays(a.plan, level): r(x + v))
            ms = interleaved(cases, runs)
        print(f"{rt} ms: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()), flush=True)
        for key, a in arts.items():
            own, shut = ms[f"{key}:own"], ms[f"{key}:closed"]
            method, extra = (key, "") if key in models else (key.rsplit("_", 1)[0], "_" + key.rsplit("_", 1)[1])
            got[method].update({f"ffn_ratio_{rt}{extra}": round((own - shut) / (ms["dense"] - shut), 4),
                                f"model_ratio_{rt}{extra}": round(own / ms["dense"], 4)})
            if not extra:
                got[method][f"mode_{rt}"] = a.plan["mode"]
    return got


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
    ap.add_argument("--export-budget", type=float, default=0.5, help="the budget whose models are exported and timed")
    ap.add_argument("--runs", type=int, default=50, help="timed runs of each exported case")
    ap.add_argument("--tokens", type=int, default=128, help="tokens of the timed input")
    ap.add_argument("--save", type=Path, metavar="DIR", help="save every converted model to DIR/<method>-<budget>")
    ap.add_argument("--load", type=Path, metavar="DIR", help="load the models --save wrote instead of converting "
                    "(convert_seconds are then null)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    train = edge.batches(tok, passages.split("train").texts[:args.train_limit], 32)
    calib = edge.batches(tok, passages.split("calib").texts[:512], 64)
    test_b, teacher_out, probe, y, share = held_out(model, tok, passages, args.test_limit)
    acc_teacher = probe.accuracy(teacher_out, y)
    print(f"original: probe accuracy {acc_teacher:.4f}; FFNs are {share:.3f} of the model FLOPs", flush=True)
    distill = edge.DistillConfig(repr_steps=args.repr_steps, gate_steps=args.gate_steps,  # (resolved per method:
                                 e2e_steps=args.e2e_steps)  # the end-to-end steps of acmize's and moefy's defaults)
    precision = distill.resolved().precision
    rows, timed = [], {}

    def record(method, budget, m, seconds):
        rep, out = compare(m, teacher_out, test_b, share)
        row = {"budget": budget, "method": method, "achieved": rep["ffn_fraction"], "cos_mean": rep["cos_mean"],
               "cos_p5": rep["cos_p5"], "acc": probe.accuracy(out, y), "convert_seconds": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.save and not args.load and method != "static":  # (static: the adaptive model's, set again on load)
            edge.save(m, args.save / f"{method}-{budget:g}", overwrite=True)
        if budget == args.export_budget and method != "static":
            timed[method] = m

    exported = {}

    def export_timed():  # as soon as the export budget's models are there (its figures then survive a cut run)
        if timed and not exported:
            with tempfile.TemporaryDirectory() as tmp:
                exported.update(export_ratios(timed, model, text_example(tok, passages.split("test").texts, args.tokens),
                                              args.runs, Path(tmp)))

    if args.load:
        for budget in args.budgets:
            for method in [m for m in METHODS if m in args.methods]:
                m = edge.load(args.load / f"{'moe-adaptive' if method == 'static' else method}-{budget:g}")
                if method == "static":
                    set_static_(m, calib, budget)
                record(method, budget, m, None)
            export_timed()
    else:
        convert_all(args, model, train, calib, distill, record, export_timed)
    export_timed()
    print(f"{'budget':>6} {'method':>13} {'achieved':>8} {'cos':>7} {'cos_p5':>7} {'acc':>7} {'seconds':>7}"
          f"   (original acc {acc_teacher:.4f}; trained in {precision})")
    for r in rows:
        secs = "" if r["convert_seconds"] is None else f"{r['convert_seconds']:.0f}"
        print(f"{r['budget']:>6} {r['method']:>13} {r['achieved']:>8.3f} {r['cos_mean']:>7.4f} {r['cos_p5']:>7.4f} "
              f"{r['acc']:>7.4f} {secs:>7}")
    for method, e in exported.items():
        print(f"{method} at {args.export_budget:g}: " + ", ".join(f"{k} {v}" for k, v in e.items()))

    def col(key):
        return [exported.get(r["method"], {}).get(key) if r["budget"] == args.export_budget else None for r in rows]

    print(json.dumps({"budget": [r["budget"] for r in rows], "method": [r["method"] for r in rows],
                      "achieved": [r["achieved"] for r in rows], "cos_mean": [r["cos_mean"] for r in rows],
                      "cos_p5": [r["cos_p5"] for r in rows], "acc": [r["acc"] for r in rows],
                      "acc_teacher": acc_teacher, "convert_seconds": [r["convert_seconds"] for r in rows],
                      "experts": args.experts, "precision": precision,
                      **{k: col(k) for k in ("ffn_ratio_executorch", "model_ratio_executorch", "ffn_ratio_onnx",
                                             "model_ratio_onnx", "mode_executorch", "mode_onnx",
                                             "ffn_ratio_executorch_graph", "model_ratio_executorch_graph")},
                      "cpu": machine()["cpu"]}))


def convert_all(args, model, train, calib, distill, record, after_budget) -> None:
    """Every method at every budget: the budget-independent phases once, then edge.retarget per budget
    (after_budget() after each)."""
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
        after_budget()


if __name__ == "__main__":
    main()
