"""Equal latency (issue 38): which of edge's transforms gives the most accuracy at the same measured time
on ExecuTorch (the native runner, 1 thread, --tokens tokens), on MiniLM's novel task (the linear probe
fitted on the ORIGINAL model's embeddings, applied unchanged to each model's output; the whole test split):

  optin            edge.prune at 0.8, 0.6, 0.4 of the FLOPs (the default refit): smaller dense models;
  acm              edge.acmize at its defaults (as `edge acmize`), the knob at 1.0 .. 0.25 (calibrate_budget_);
  exits+skips+acm  that ACM model with exits (edge.add_exits) and attention routers (edge.add_skips) at their
                   defaults, steered by the one budget knob (edge.set_budget_) to 1.0 .. 0.35 of the FLOPs;
  optin+acm        edge.prune at --optin-acm-flops, then edge.acmize at its defaults, the knob as acm's;
  int8, optin+int8 the original and the optin models quantized last (edge.quantize, 8da8w).

Every point of an adaptive model is a budget level of ONE routed artifact (the knob values its eager
model had when its accuracy was measured); all artifacts and levels are timed in turn in one native-runner
process with the dense original, so the ratios share the machine's noise. `flops_frac`: edge's FLOP count
on the test split against the original's. The table is sorted by time; `best_at`: for each latency
ratio bound in --bounds, the most accurate point at or under it and its method.

    .venv/bin/python bench/prune_latency.py            # ~50 minutes on 2 cores (two conversions, one scoring)
    .venv/bin/python bench/prune_latency.py --acm DIR --optin-acm DIR   # converted models saved by an earlier run
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import edge
import export
from device.measure import machine
from edge.fit import fit_acms, fit_exits, fit_skips
from edge.pruning import _calibration, importance, prune
from export.graph import GraphModel

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402
from export_speed import native_medians, text_example  # noqa: E402
from prune import outputs  # noqa: E402

OPTIN = (0.8, 0.6, 0.4)
KNOB = (1.0, 0.75, 0.5, 0.35, 0.25)
STEERED = (1.0, 0.7, 0.5, 0.35)
INT8 = "8da8w"
BOUNDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def converted(path: Path | None, make, save: Path | None):
    """A converted model: loaded from `path`, or made (and saved to `save` when given)."""
    if path is not None:
        try:
            return edge.load(path)
        except edge.EdgeError as e:
            raise SystemExit(f"prune_latency.py: {e}") from None
    m = make()
    if save is not None:
        edge.save(m, save)
    return m


def knobs(model) -> dict:
    """The model's own knob values, as a budget level of its export takes them."""
    return {k: v.tolist() for k, v in GraphModel(model).knobs().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acm", type=Path, metavar="DIR", help="the ACM model (edge acmize's output) instead of converting")
    ap.add_argument("--optin-acm", type=Path, metavar="DIR", help="the pruned-then-ACMized model instead of making it")
    ap.add_argument("--save", type=Path, metavar="DIR", help="save the models converted in the run here (acm, optin-acm)")
    ap.add_argument("--scores", type=Path, metavar="FILE", help="OPTIN's importance scores of MiniLM saved by an "
                    "earlier run (torch.save of edge.pruning.importance's result; computed and saved there if absent)")
    ap.add_argument("--optin-acm-flops", type=float, default=0.8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--test-limit", type=int, default=None, help="the first N test passages (default: all)")
    ap.add_argument("--bounds", type=float, nargs="+", default=list(BOUNDS))
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    test_b, teacher_out, probe, y, _ = held_out(model, tok, passages, args.test_limit)
    acc_full = probe.accuracy(teacher_out, y)
    full_flops = outputs(model, test_b)[1]
    knob_calib = edge.batches(tok, passages.split("calib").texts[:256], 64)
    prune_cfg = edge.PruneConfig()
    calib = edge.batches(tok, passages.split("calib").texts[:prune_cfg.refit_sequences], 64)
    t0, prune_seconds = time.time(), None
    loaded = bool(args.scores and args.scores.exists())
    if loaded:
        scores = torch.load(args.scores, weights_only=True)
    else:
        scores = importance(model, _calibration(calib, prune_cfg.sequences), prune_cfg)
        if args.scores:
            torch.save(scores, args.scores)
    pruned = {}
    for f in [*OPTIN, *({args.optin_acm_flops} - set(OPTIN))]:
        pruned[f] = prune(model, edge.PruneConfig(flops=f), calib, scores=scores, progress=False)
        if prune_seconds is None and not loaded:
            prune_seconds = round(time.time() - t0, 1)  # (scoring, solving and the refit at the first fraction)
    save = (lambda name: args.save / name) if args.save else (lambda name: None)
    acm = converted(args.acm, lambda: fit_acms(model, tok, passages, edge.AcmConfig(), progress=False), save("acm"))
    optin_acm = converted(args.optin_acm, lambda: fit_acms(pruned[args.optin_acm_flops], tok, passages,
                                                           edge.AcmConfig(), progress=False), save("optin-acm"))
    depth = fit_skips(fit_exits(acm, tok, passages, edge.ExitConfig(), progress=False), tok, passages,
                      edge.SkipConfig(), progress=False)

    points = []  # {method, point, flops_frac, acc, knobs: the level's knob values (None: a plain model)}

    def measure(method: str, point: str, m, knobs=None):
        out, spent = outputs(m, test_b)
        points.append({"method": method, "point": point, "flops_frac": round(spent / full_flops, 4),
                       "acc": round(probe.accuracy(out, y), 4), "knobs": knobs})
        print(f"{method} {point}: flops {points[-1]['flops_frac']}, acc {points[-1]['acc']}", flush=True)

    int8 = {f: edge.quantize(m, edge.QuantConfig(INT8)) for f, m in [(1.0, model), *((f, pruned[f]) for f in OPTIN)]}
    for f in OPTIN:
        measure("optin", f"{f:g}", pruned[f])
    for f, m in int8.items():
        measure("int8" if f == 1.0 else "optin+int8", f"{f:g}", m)
    for method, m in (("acm", acm), ("optin+acm", optin_acm)):
        for b in KNOB:
            edge.calibrate_budget_(m, knob_calib, b)
            measure(method, f"{b:g}", m, knobs(m))
    for b in STEERED:
        edge.set_budget_(depth, model, b, knob_calib)
        measure("exits+skips+acm", f"{b:g}", depth, knobs(depth))

    example = text_example(tok, passages.split("test").texts, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        plain = {"dense": export.to_runtime(model, "executorch", Path(tmp) / "dense", example, progress=False).path}
        for f in OPTIN:
            plain[f"optin@{f:g}"] = export.to_runtime(pruned[f], "executorch", Path(tmp) / f"optin{f}", example,
                                                      progress=False).path
        for f, m in int8.items():
            name = "int8@1" if f == 1.0 else f"optin+int8@{f:g}"
            plain[name] = export.to_runtime(m, "executorch", Path(tmp) / name, example, progress=False).path
        gated = []
        for method, m in (("acm", acm), ("optin+acm", optin_acm), ("exits+skips+acm", depth)):
            levels = [{"name": f"{p['method']}@{p['point']}", **p["knobs"]} for p in points if p["method"] == method]
            gated.append(export.to_runtime(m, "executorch", Path(tmp) / method.replace("+", "-"), example,
                                           progress=False, mode="routed", levels=levels).path)
        ms = native_medians(plain, gated, args.runs)
    for p in points:
        p["latency_ratio_executorch"] = round(ms[f"{p['method']}@{p['point']}"] / ms["dense"], 3)
    points.sort(key=lambda p: p["latency_ratio_executorch"])
    print(f"\n{'method':<16} {'point':>6} {'FLOPs':>7} {'time':>6} {'acc':>7}   (original: acc {acc_full:.4f}, "
          f"{ms['dense']:.2f} ms; ExecuTorch native runner, 1 thread)")
    for p in points:
        print(f"{p['method']:<16} {p['point']:>6} {p['flops_frac']:>7.3f} {p['latency_ratio_executorch']:>6.3f} "
              f"{p['acc']:>7.4f}")
    best_at = []
    for bound in args.bounds:
        within = [p for p in points if p["latency_ratio_executorch"] <= bound]
        best = max(within, key=lambda p: p["acc"], default=None)
        best_at.append(None if best is None else {"bound": bound, "method": best["method"], "point": best["point"],
                                                  "acc": best["acc"]})
        print(f"at <= {bound:g}x: " + ("nothing" if best is None else f"{best['method']} {best['point']} "
                                                                      f"(acc {best['acc']})"))
    keys = ("method", "point", "flops_frac", "latency_ratio_executorch", "acc")
    print(json.dumps({**{k: [p[k] for p in points] for k in keys}, "acc_full": round(acc_full, 4),
                      "dense_ms": round(ms["dense"], 3), "best_at": best_at, "prune_seconds": prune_seconds,
                      "cpu": machine()["cpu"]}))


if __name__ == "__main__":
    main()
