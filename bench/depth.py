"""Adaptive depth, side by side, on two real models: accuracy against average FLOPs for
(a) exits, (b) skips (MindSkip router-tuning), (a+b) exits + skips, (c) exits + skips + ACM, and
(d) the static baseline at equal FLOPs (the same layers removed for every input).

Tasks (real data, held-out evaluation):
  minilm       all-MiniLM-L6-v2 (pretrained), which of Austen's six novels a passage is from: a linear
               probe fitted on the ORIGINAL model's embeddings of the probe split (2,688 labelled
               passages) is made MiniLM's task head (edge.add_head), so the model is a classifier. Its
               exits after layers 1-5 are fitted to the labels of the same probe passages (the
               task's classifier at each depth, edge.add_exits(labels=...)); the routers are
               router-tuned on the train split; thresholds are chosen on the whole calib split,
               accuracy is reported on the whole test split. The ACM model is the embedding model
               converted (as bench/acm_fidelity.py does) with the same task head put on it.
  fashion-vit  a 6-layer ViT TRAINED HERE on Fashion-MNIST's 60k training images (edge.vision).
               Exits and routers train on training images, thresholds are chosen on the first
               2,000 test images, accuracy is reported on the other 8,000.

Operating points per method, all chosen on calibration data, never on the test split:
  "1pt"   the cheapest setting whose calibration accuracy is within 0.5 point of the full model's
          (a margin for the move to unseen data; the target is 1 point on test);
  "0.7", "0.5"  the most accurate setting within that FLOP fraction.
The static baseline of a point: the most accurate (on calibration) fixed configuration - truncation
after an exit, the same attentions removed for every input (nested sets, least harmful first), and
for (c) every token running the same number of ACM learners - with calibration FLOPs no higher than
the dynamic point's. FLOPs are counted analytically per sequence (padding excluded, exit heads,
routers and gates included) as a fraction of the original model's.

    .venv/bin/python bench/depth.py          # about an hour on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import edge
from edge.acm import acm_modules
from edge.arch import arch_for
from edge.budget import Setting, apply_setting_, sweep
from edge.exits import exit_heads
from edge.forward import run, take_exits
from edge.parts import parts
from edge.skips import routers

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import clear_static_, set_static_  # noqa: E402

MARGIN = 0.005  # calibration accuracy may drop this much at the "1pt" point
BUDGETS = (0.7, 0.5)


@dataclass
class Task:
    name: str
    model: torch.nn.Module
    train: list[dict]
    calib: list[dict]
    calib_y: torch.Tensor
    test: list[dict]
    test_y: torch.Tensor
    predict: object  # outputs (N, D) -> predicted labels (N,)
    exits_after: list[int]
    acm: edge.AcmConfig
    exit_data: list[dict]  # what the exit heads are fitted on ...
    exit_labels: list[torch.Tensor] | None  # ... and its labels, for exits that learn the task
    base: torch.nn.Module  # what the ACM conversion converts (MiniLM: the embedding model) ...
    finish: object  # ... and what makes the task's model of it (MiniLM: puts the task head on)

    def acc(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(out) == y).float().mean())


def minilm_task(args) -> Task:
    from edge.evaluate import teacher_probe

    model, tok = edge.load_pretrained()
    p = edge.austen_passages()
    calib_p, test_p = p.split("calib"), p.split("test")
    if args.calib_limit:
        calib_p = calib_p.sample(args.calib_limit)
    if args.test_limit:
        test_p = test_p.head(args.test_limit)
    probe = teacher_probe(model, tok, p)
    finish = lambda m: edge.add_head(m, probe.as_linear(), p.label_names)  # noqa: E731
    probe_p = p.split("probe")
    probe_b = edge.batches(tok, probe_p.texts, 64)
    labels = torch.tensor(probe_p.labels).split([len(b["input_ids"]) for b in probe_b])
    return Task("minilm", finish(model), edge.batches(tok, p.split("train").texts, 32),
                edge.batches(tok, calib_p.texts, 64), torch.tensor(calib_p.labels),
                edge.batches(tok, test_p.texts, 64), torch.tensor(test_p.labels),
                lambda out: out.argmax(-1), [1, 2, 3, 4, 5], edge.AcmConfig(budget=0.5), probe_b, list(labels),
                model, finish)


def vit_task(args) -> Task:
    from edge.data import fashion_mnist
    from edge.vision import fashion_vit, image_batches

    model = fashion_vit()
    x, y = fashion_mnist("train")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:12000]
    xt, yt = fashion_mnist("test")
    n_test = args.test_limit or len(xt)
    train = image_batches(x[perm], 64)
    return Task("fashion-vit", model, train, image_batches(xt[:2000]), yt[:2000],
                image_batches(xt[2000:n_test]), yt[2000:n_test], lambda out: out.argmax(-1), [2, 3, 4, 5],
                edge.AcmConfig(budget=0.75), train, None, model, lambda m: m)


def adaptive(task: Task, base: torch.nn.Module, args) -> tuple[torch.nn.Module, float]:
    """base + exit heads + routers (only those trained). Returns the model and router-tuning seconds."""
    steps = 10 if args.quick else edge.ExitConfig.steps
    m = edge.add_exits(base, edge.ExitConfig(after=task.exits_after, steps=steps), task.exit_data,
                       labels=task.exit_labels)
    t0 = time.time()
    m = edge.add_skips(m, edge.SkipConfig(samples=args.router_samples), task.train)
    return m, time.time() - t0


def evaluate(task: Task, m, batches, y) -> tuple[float, float]:
    """(FLOP fraction, accuracy) of `m` at its current setting, through the real forward that exits
    and skips."""
    spent = full = 0.0
    outs = []
    with torch.no_grad():
        for b in batches:
            out, trace = run(m, b)
            outs.append(out)
            spent += float(trace.flops.sum())
            full += float(trace.full_flops.sum())
    return spent / full, task.acc(torch.cat(outs), y)


# --- static baseline -------------------------------------------------------------------------------
def force_skips_(m, skipped: set[int]) -> None:
    """Routers that ignore their input: layers in `skipped` always skip their attention, others never."""
    parts(m).set_config("skips", edge.SkipConfig(threshold=0.5))
    with torch.no_grad():
        for i, r in routers(m).items():
            r.linear.weight.zero_()
            r.linear.bias.fill_(-30.0 if i in skipped else 30.0)


def static_pass(task: Task, m, batches, y) -> dict[int, tuple[float, float]]:
    """One full pass; for every truncation point k (each exit, and the end): (FLOP fraction, accuracy)
    of the static model that stops there. Router scoring is a fixed configuration, not counted."""
    outs, flops, full = {}, {}, 0.0
    with torch.no_grad():
        for b in batches:
            out, trace = run(m, b, exits=False, collect=True)
            full += float(trace.full_flops.sum())
            n = len(trace.layer_flops)
            for k in [*exit_heads(m), n]:
                y_k = trace.exits[k][0] if k < n else out
                spent = trace.layer_flops[k - 1] if k < n else trace.flops
                extra = exit_heads(m)[k].flops() if k < n else 0
                routers_run = sum(routers(m)[i].flops() for i in routers(m) if i <= k)
                outs.setdefault(k, []).append(y_k)
                flops[k] = flops.get(k, 0.0) + float((spent - routers_run + extra).sum())
    return {k: (flops[k] / full, task.acc(torch.cat(outs[k]), y)) for k in outs}


def static_candidates(task: Task, m, acm_levels) -> list[dict]:
    """Fixed configurations on calibration data: nested attention-removal sets (least harmful
    first) x truncation points x ACM static levels."""
    m = copy.deepcopy(m)
    n = len(arch_for(m).layers(m))
    harm = {}
    for j in range(1, n + 1):
        force_skips_(m, {j})
        harm[j] = static_pass(task, m, task.calib, task.calib_y)[n][1]
    order = sorted(harm, key=harm.get, reverse=True)
    rows = []
    for level in acm_levels:
        if level is not None:
            set_static_(m, level)
        for s in range(n + 1):
            skipped = set(order[:s])
            force_skips_(m, skipped)
            for k, (f, a) in static_pass(task, m, task.calib, task.calib_y).items():
                rows.append({"skipped": sorted(skipped), "truncate": k, "acm": level, "flops_frac": f, "acc": a})
        if level is not None:
            clear_static_(m)
    return rows


def static_on_test(task: Task, m, row) -> tuple[float, float]:
    m = copy.deepcopy(m)
    if row["acm"] is not None:
        set_static_(m, row["acm"])
    force_skips_(m, set(row["skipped"]))
    return static_pass(task, m, task.test, task.test_y)[row["truncate"]]


# --- operating points --------------------------------------------------------------------------------
METHODS = {  # name -> (model key, which rows of its sweep)
    "exits": ("depth", lambda r: r["skip_threshold"] == 0.0),
    "skips": ("depth", lambda r: r["exit_threshold"] == 1.0),
    "exits+skips": ("depth", lambda r: True),
    "exits+skips+acm": ("acm", lambda r: True),
}


def points(rows: list[dict], full_acc: float) -> dict[str, dict]:
    out = {}
    ok = [r for r in rows if r["quality"] >= full_acc - MARGIN]
    if ok:
        out["1pt"] = min(ok, key=lambda r: (r["flops_frac"], -r["quality"]))
    for b in BUDGETS:
        within = [r for r in rows if r["flops_frac"] <= b]
        if within:
            out[str(b)] = max(within, key=lambda r: (r["quality"], -r["flops_frac"]))
    return out


def bench_task(task: Task, args) -> tuple[list[dict], float]:
    print(f"== {task.name}: {len(task.calib_y)} calibration, {len(task.test_y)} test inputs", flush=True)
    arch = arch_for(task.model)
    with torch.no_grad():
        full_out = torch.cat([arch.output(task.model, b) for b in task.test])
        full_calib = torch.cat([arch.output(task.model, b) for b in task.calib])
    acc_full, acc_full_calib = task.acc(full_out, task.test_y), task.acc(full_calib, task.calib_y)
    print(f"original model: test accuracy {acc_full:.4f} (calibration {acc_full_calib:.4f})", flush=True)

    depth, router_seconds = adaptive(task, task.model, args)
    print(f"router-tuning: {router_seconds:.1f} s on {args.router_samples} samples", flush=True)
    if args.acm and task.name == "minilm":  # a conversion saved by bench/acm_fidelity.py --save
        acm_base = edge.load(args.acm)
        print(f"acmize: loaded {args.acm} (budget {parts(acm_base).config('acm').budget})", flush=True)
    else:
        t0 = time.time()
        distill = edge.DistillConfig(repr_steps=5, gate_steps=5, e2e_steps=5) if args.quick else edge.DistillConfig()
        acm_base = edge.acmize(task.base, task.acm, task.train, task.calib, distill)
        print(f"acmize: {time.time() - t0:.0f} s", flush=True)
    acm, _ = adaptive(task, task.finish(acm_base), args)
    models = {"depth": depth, "acm": acm}

    score = lambda out: task.acc(out, task.calib_y)  # noqa: E731
    sweeps = {k: sweep(m, None, task.calib, progress=True, score=score) for k, m in models.items()}
    statics = {"depth": static_candidates(task, depth, [None]),
               "acm": static_candidates(task, acm, [1.0, 0.75, 0.5])}
    entries = []
    for method, (key, keep) in METHODS.items():
        m = models[key]
        for name, row in points([r for r in sweeps[key] if keep(r)], acc_full_calib).items():
            apply_setting_(m, Setting(row["exit_threshold"], row["skip_threshold"], row["acm_budget"]), task.calib)
            flops, acc = evaluate(task, m, task.test, task.test_y)
            apply_setting_(m, Setting(1.0, 0.0, row["acm_budget"]))
            fair = [s for s in statics[key] if s["flops_frac"] <= row["flops_frac"]]
            best = max(fair, key=lambda s: (s["acc"], -s["flops_frac"])) if fair else None
            s_flops, s_acc = static_on_test(task, m, best) if best else (None, None)
            e = {"task": task.name, "method": method, "point": name, "flops_frac": flops, "acc": acc,
                 "acc_static": s_acc, "static_flops_frac": s_flops, "acc_full": acc_full,
                 "static": best and {k: best[k] for k in ("skipped", "truncate", "acm")},
                 "setting": {k: row[k] for k in ("exit_threshold", "skip_threshold", "acm_budget")}}
            entries.append(e)
            print(json.dumps(e), flush=True)
    return entries, router_seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["minilm", "fashion-vit"], choices=["minilm", "fashion-vit"])
    ap.add_argument("--calib-limit", type=int, default=None, help="MiniLM: calibration passages (default: all 1,792)")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--router-samples", type=int, default=1000)
    ap.add_argument("--acm", metavar="DIR", help="MiniLM's ACM model from `bench/acm_fidelity.py --save` "
                    "(the same conversion at budget 0.5) instead of converting it again here")
    ap.add_argument("--quick", action="store_true", help="a few training steps: checks the script, not figures")
    args = ap.parse_args()
    torch.manual_seed(0)
    entries, router_seconds = [], {}
    for name in args.tasks:
        task = {"minilm": minilm_task, "fashion-vit": vit_task}[name](args)
        e, router_seconds[name] = bench_task(task, args)
        entries += e
    print(f"{'task':<12} {'method':<16} {'point':<5} {'flops':>6} {'acc':>7} {'static':>7} {'s_flops':>7} {'full':>7}")
    for e in entries:
        st = f"{e['acc_static']:>7.4f} {e['static_flops_frac']:>7.3f}" if e["acc_static"] is not None else f"{'-':>7} {'-':>7}"
        print(f"{e['task']:<12} {e['method']:<16} {e['point']:<5} {e['flops_frac']:>6.3f} {e['acc']:>7.4f} {st} "
              f"{e['acc_full']:>7.4f}")
    print(json.dumps({"task": [e["task"] for e in entries], "method": [e["method"] for e in entries],
                      "point": [e["point"] for e in entries], "flops_frac": [e["flops_frac"] for e in entries],
                      "acc": [e["acc"] for e in entries], "acc_static": [e["acc_static"] for e in entries],
                      "acc_full": [e["acc_full"] for e in entries],
                      "router_tuning_seconds": max(router_seconds.values()),
                      "router_tuning_seconds_per_task": router_seconds}))


if __name__ == "__main__":
    main()
