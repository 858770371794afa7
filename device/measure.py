"""The measuring side of the profiler: run an artifact on THIS machine and write what it costs as JSON
lines, one record per budget level and per branch-forcing case, then the operator profile and the
memory, flushed as it goes, so that a crash or a timeout keeps what was measured. A target runs this
where the artifact is (the local target: in a subprocess of its own, so its peak memory is its own).

    python -m device.measure ARTIFACT_DIR --out results.jsonl [--runs 50] [--warmup 5] [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from importlib.metadata import version

import numpy as np

from edge.errors import EdgeError


def machine() -> dict:
    """The machine the numbers belong to."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version()}


def describe(threads: int, runtime: str, device: str = "cpu") -> dict:
    """The machine, the runtime and its version, the threads, the device it runs on."""
    from device.runtime import RUNTIMES

    return {**machine(), "runtime": runtime, "runtime_version": version(RUNTIMES.get(runtime).package),
            "threads": threads, "device": device}


def read_records(text: str) -> list[dict]:
    """The records in `text`, up to the first line that is not one (a line still being written, or
    one cut off by a kill)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def branch(plan: dict, out: list[np.ndarray]) -> dict:
    """What the artifact did on one run: the exit taken, the layers skipped, the units run per token
    (acm_fraction: learners over N; moe_fraction: experts over E, from the routes' bit masks), over
    the layers reached."""
    got = dict(zip(plan["outputs"], out))
    b = {"exit_layer": int(got["exit_layer"][0]),
         "skipped": [i + 1 for i, s in enumerate(got["skipped"].tolist()) if s]}
    if "ks" in got:
        ks = got["ks"][got["ks"] >= 0].astype(np.int64)
        moes = plan["control_flow"].get("moes")
        if moes:
            n = moes[0]["experts"]
            bits = (ks[:, None] >> np.arange(n)) & 1
            b["moe_fraction"] = float(bits.sum(1).mean() / n) if ks.size else 0.0
        else:
            b["acm_fraction"] = float(ks.mean() / plan["control_flow"]["acms"][0]["learners"]) if ks.size else 0.0
    return b


def timed(run, args: list[np.ndarray], runs: int, warmup: int) -> tuple[list[float], list[np.ndarray]]:
    for _ in range(warmup):
        out = run(args)
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = run(args)
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, out


def knob_arrays(plan: dict, values: dict) -> list[np.ndarray]:
    return [np.asarray(values[s["name"]], dtype=np.float32).reshape(s["shape"]) for s in plan["knobs"]]


def measure(path: str, out, runs: int = 50, warmup: int = 5, threads: int = 1, branch_runs: int = 10,
            ops: bool = True, device: str = "cpu") -> None:
    """Measure the artifact at `path`, writing records (dicts) to `out` (a function)."""
    from device.artifact import load_artifact

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a = load_artifact(path)
    plan = a.plan
    run, t = a.runner(threads, device), a.checks()  # (first: a missing device is an error, not a record)
    out({"kind": "device", **describe(threads, plan["runtime"], device)})
    x = a.inputs(t)
    for level in plan["budget_levels"]:
        ms, o = timed(run, x + knob_arrays(plan, level), runs, warmup)
        out({"kind": "level", "name": level["name"], "ms": ms, "branch": branch(plan, o)})
    for c, check in enumerate(plan["checks"]):
        knobs = [t[f"case{c}.{s['name']}"] for s in plan["knobs"]]
        ms, o = timed(run, x + knobs, branch_runs, 1)
        out({"kind": "branch", "case": check["case"], "ms": ms, "branch": branch(plan, o)})
    if ops:  # a run of its own: the operator profiler costs time
        prun, profile = a.profiled_runner(threads, device)
        knobs = knob_arrays(plan, plan["budget_levels"][0])
        n = max(1, min(runs, 10))
        w = min(warmup, n)
        if w:  # freshly loaded: without it the first, colder run is in the profile
            for _ in range(w):
                prun(x + knobs)
            profile.restart()
        for _ in range(n):
            prun(x + knobs)
        out({"kind": "ops", "level": plan["budget_levels"][0]["name"], "runs": n, "warmup": w, **profile.read()})
    out({"kind": "memory", "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
         "rss_at_start_mb": rss0})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.measure", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--out", required=True, help="JSON lines file to append the records to")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--branch-runs", type=int, default=10)
    ap.add_argument("--no-ops", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    with open(args.out, "a") as f:
        def write(record: dict) -> None:
            f.write(json.dumps(record) + "\n")
            f.flush()

        try:
            measure(args.artifact, write, args.runs, args.warmup, args.threads, args.branch_runs, not args.no_ops,
                    args.device)
        except EdgeError as e:
            write({"kind": "error", "message": str(e)})
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
