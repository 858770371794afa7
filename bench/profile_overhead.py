"""What profiling and choosing a preset cost, on the adaptive MiniLM (ACM FFNs, exits after layers
2..5, a skip router per layer), exported for ExecuTorch (routed) with 5 budget levels:

  runner_vs_python   the native runner's p50 latency / the Python runtime's (executorch.runtime driven
                     by device.driver.drive), same artifact, first budget level, the median of 3
                     interleaved pairs of profiles (per level as well);
  p90_over_p50       the spread p90 / p50 of the first budget level, the largest over the 3 repeated
                     profiles (50 runs each) with the Python runtime (and with the native runner);
  preset_choose_seconds  wall time of `edge preset choose` over the 5 levels (30 runs each, 64
                     held-out passages for quality).

The model is trained briefly (distillation at 1/5 of the default steps): the figures are costs of the
tools, not of a good model. The built artifact is kept in --work and reused.

    taskset -c 0 .venv/bin/python bench/profile_overhead.py
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import edge
import export
import profiler

BUDGETS = (1.0, 0.85, 0.7, 0.6, 0.5)


def build(work: Path) -> Path:
    art = work / "minilm-executorch"
    if (art / "plan.json").exists():
        return art
    model, tok = edge.load_pretrained()
    p = edge.austen_passages()
    train = edge.batches(tok, p.split("train").texts[:2000], 32)
    calib = edge.batches(tok, p.split("calib").texts[:256], 64)
    t0 = time.time()
    acm = edge.acmize(model, edge.AcmConfig(budget=0.75), train, calib,
                      edge.DistillConfig(repr_steps=50, gate_steps=16, e2e_steps=40))
    acm = edge.add_exits(acm, edge.ExitConfig(after=[2, 3, 4, 5]), train)
    acm = edge.add_skips(acm, edge.SkipConfig(samples=500), train)
    print(f"adaptive MiniLM built in {time.time() - t0:.0f} s", flush=True)
    levels = export.budget_levels(acm, model, calib[:2], BUDGETS)
    example = dict(tok([p.split("test").texts[0]], padding="max_length", truncation=True, max_length=128, return_tensors="pt"))
    example = {k: example[k] for k in ("input_ids", "attention_mask")}
    export.to_runtime(acm, "executorch", art, example, levels=levels, tokenizer=tok)
    return art


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/edge-bench-profile")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    art = build(work)
    plan = export.load_artifact(art).plan
    print("budget levels:", [(lv["name"], lv["flops_frac"], lv["calib_quality"]) for lv in plan["budget_levels"]], flush=True)
    spreads, p50 = {"python": [], "native": []}, {"python": [], "native": []}
    for i in range(3):
        for runner in ("python", "native"):  # interleaved: the machine's drift hits both alike
            config = profiler.ProfileConfig(runs=args.runs, branch_runs=0, ops=False, runner=runner)
            r = profiler.profile(art, "local", config, progress=False)
            s = r["levels"][0]["stats"]
            spreads[runner].append(s["p90"] / s["p50"])
            p50[runner].append([lv["stats"]["p50"] for lv in r["levels"]])
            print(f"profile {i + 1} {runner:>6}: " + ", ".join(
                f"{lv['name']} p50 {lv['stats']['p50']:.2f} p90 {lv['stats']['p90']:.2f} ms" for lv in r["levels"]), flush=True)
    ratios = np.array(p50["native"]) / np.array(p50["python"])  # (repeat, level)
    per_level = np.median(ratios, axis=0)
    print("native / python p50 per level:", ", ".join(f"{lv['name']} {x:.3f}" for lv, x in zip(plan["budget_levels"], per_level)))
    t0 = time.time()
    out = work / "preset.yaml"
    r = subprocess.run([sys.executable, "-m", "edge", "preset", "choose", str(art), "--budget-ms", "1000",
                        "--runs", "30", "--texts", "64", "-o", str(out), "--overwrite", "--quiet"],
                       capture_output=True, text=True)
    choose_s = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"edge preset choose failed: {r.stderr.strip()[-500:]}")
    print(r.stdout, end="")
    print(json.dumps({"runner_vs_python": round(float(per_level[0]), 4),
                      "runner_vs_python_per_level": [round(float(x), 4) for x in per_level],
                      "p90_over_p50": round(max(spreads["python"]), 4),
                      "p90_over_p50_each": [round(x, 4) for x in spreads["python"]],
                      "p90_over_p50_native": round(max(spreads["native"]), 4),
                      "preset_choose_seconds": round(choose_s, 1), "levels": len(plan["budget_levels"])}))


if __name__ == "__main__":
    main()
