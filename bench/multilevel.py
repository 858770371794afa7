"""Multi-level V-cycle training (issue 40) against plain training, side by side in one run: the same
task, batch stream, seeds and optimizer (edge.vcycle.train; levels=1 is the plain run), wall-clock on
the cores given (2 here), evaluations excluded from the clock.

  fashion-vit  the 6-layer ViT of edge.vision from scratch on Fashion-MNIST (test accuracy, 10k images);
  austen-mlm   the 4-layer, hidden-256 BERT masked-language model of edge.mlm on the Austen training
               split (validation MLM loss on a fixed masking of 512 test-split passages).

Each training runs in its own fresh process, one after the other. The baseline trains --epochs (per task)
and is evaluated at its end; the V-cycle run is evaluated every
--every steps of its last phase: `vcycle_seconds_to_baseline` is the training time at its first
evaluation as good as the baseline's final figure (null: never), `time_saving` = 1 - that / the
baseline's training time (null: never reached).

    .venv/bin/python bench/multilevel.py                       # both tasks, ~35 minutes on 2 cores
    .venv/bin/python bench/multilevel.py --tasks fashion-vit --levels 2 --width 2 --depth 2 --alpha 0.5
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from device.measure import machine
from edge.tasks import task
from edge.vcycle import VCycleConfig, epochs_steps, first_reaching, train

EPOCHS = {"fashion-vit": 5.0, "austen-mlm": 2.5}
EVERY = {"fashion-vit": 50, "austen-mlm": 20}  # evaluations of the V-cycle's last phase: about 28 and 13


def _in_own_process(name: str, cfg: VCycleConfig, steps: int, seed: int, every: int) -> dict:
    """One training run in a fresh Python process (in one process, a run after another ran up to 50 %
    slower here: the MLM's plain run took 305 s alone and 458 s after the ViT's two runs) -> its
    {"seconds", "history"}."""
    spec = json.dumps({"task": name, "config": cfg.to_dict(), "steps": steps, "seed": seed, "every": every})
    r = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"the {name} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child(spec: str) -> None:
    s = json.loads(spec)
    run = train(task(s["task"]), VCycleConfig.from_dict(s["config"]), total_steps=s["steps"], seed=s["seed"],
                evaluate_every=s["every"], progress=False)
    print(json.dumps({"seconds": run.seconds, "history": run.history}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return _child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["fashion-vit", "austen-mlm"])
    ap.add_argument("--epochs", nargs="+", type=float, default=None, help="per task (default: 5 and 2.5)")
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--steps", nargs="+", type=float, default=(), help="each phase's share of the baseline's steps")
    ap.add_argument("--lr-scale", nargs="+", type=float, default=())
    ap.add_argument("--floor", type=float, default=VCycleConfig.floor)
    ap.add_argument("--every", type=int, default=None,
                    help="evaluate the V-cycle's last phase every this many steps (default: 50 for the ViT, 20 for the MLM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baseline", nargs="*", type=float, default=None,
                    help="(tuning only) take these baseline (final, seconds) pairs instead of training it")
    args = ap.parse_args()
    vc = VCycleConfig(levels=args.levels, width=args.width, depth=args.depth, alpha=args.alpha, steps=tuple(args.steps),
                      lr_scale=tuple(args.lr_scale), floor=args.floor)
    out = {"task": [], "baseline_final": [], "vcycle_final": [], "higher_is_better": [], "baseline_seconds": [],
           "vcycle_seconds_to_baseline": [], "vcycle_seconds": [], "time_saving": [], "curve": []}
    for n, name in enumerate(args.tasks):
        job = task(name)
        epochs = args.epochs[n] if args.epochs else EPOCHS[name]
        steps = epochs_steps(job, epochs)
        if args.skip_baseline:
            base_final, base_s = args.skip_baseline[2 * n], args.skip_baseline[2 * n + 1]
        else:
            base = _in_own_process(name, VCycleConfig(levels=1), steps, args.seed, 0)
            base_final, base_s = base["history"][-1]["metric"], base["seconds"]
            print(f"{name} baseline: {job.metric} {base_final:.4f} after {steps} steps, {base_s:.1f} s training",
                  flush=True)
        v = _in_own_process(name, vc, steps, args.seed, args.every or EVERY[name])
        reach = first_reaching(v["history"], base_final, job.higher_is_better)
        print(f"{name} V-cycle {vc.to_dict()}: {job.metric} {v['history'][-1]['metric']:.4f}, {v['seconds']:.1f} s "
              f"training; reaches the baseline's at {reach} s", flush=True)
        for row in v["history"]:
            print(f"  step {row['step']:5d}  {row['seconds']:7.1f} s  {job.metric} {row['metric']:.4f}", flush=True)
        out["task"].append(name)
        out["baseline_final"].append(round(base_final, 4))
        out["vcycle_final"].append(round(v["history"][-1]["metric"], 4))
        out["higher_is_better"].append(job.higher_is_better)
        out["baseline_seconds"].append(round(base_s, 1))
        out["vcycle_seconds_to_baseline"].append(None if reach is None else round(reach, 1))
        out["vcycle_seconds"].append(round(v["seconds"], 1))
        out["time_saving"].append(None if reach is None else round(1 - reach / base_s, 3))
        out["curve"].append([[round(r["seconds"], 1), round(r["metric"], 4)] for r in v["history"]])
    out.update(config=vc.to_dict(), threads=torch.get_num_threads(), cpu=machine()["cpu"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
