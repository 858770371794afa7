"""What an artifact costs on a target: ProfileConfig, `profile` (every budget level and branch-forcing
case measured by the target's measuring program, the records summarized into a report) and its
latency statistics."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.measure import read_records
from edge.config import Config, boolean, config, integer, one_of, optional, real, setting
from edge.errors import EdgeError
from profiler.targets import TARGETS, target_for


RUNNERS = ("python", "native", "app")


@config("profile")
@dataclass(frozen=True)
class ProfileConfig(Config):
    """runs/warmup: timed and untimed runs per budget level; branch_runs: timed runs per branch-forcing
    case; threads: the runtime's CPU threads; budget_ms at percentile (e.g. 90: p90 <= budget);
    ops: also run the runtime's per-operator profiler; timeout_s: the whole measurement's limit;
    runner: the measuring program, "python" (the runtime's Python API, device.measure), "native"
    (the C++ runner on ExecuTorch's Module API, profiler/runner; its ETDump is read here) or "app"
    (android_demo's headless benchmark on a phone; adb target; no operator profile)."""

    runs: int = setting(integer(1), 50)
    warmup: int = setting(integer(0), 5)
    branch_runs: int = setting(integer(0), 10)
    threads: int = setting(integer(1), 1)
    budget_ms: float | None = setting(optional(real(0, 1e6, low_open=True, high_open=True)), None)
    percentile: float = setting(real(0, 100, low_open=True), 90.0)
    ops: bool = setting(boolean(), True)
    timeout_s: float = setting(real(0, low_open=True), 600.0)
    runner: str = setting(one_of(*RUNNERS), "python")

    def options(self) -> list[str]:
        """The measuring side's command-line options (device.measure and the native runner share them)."""
        return ["--runs", str(self.runs), "--warmup", str(self.warmup), "--threads", str(self.threads),
                "--branch-runs", str(self.branch_runs), *([] if self.ops else ["--no-ops"])]


def stats(ms: list[float], percentile: float = 90.0) -> dict:
    a = np.asarray(ms, dtype=float)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean()), f"at_p{percentile:g}": float(np.percentile(a, percentile))}


def summarize(records: list[dict], config: ProfileConfig, plan: dict, target: dict) -> dict:
    """The report from the measuring side's records (possibly cut short)."""
    pct, budget = config.percentile, config.budget_ms
    key = f"at_p{pct:g}"
    by = lambda kind: [r for r in records if r["kind"] == kind]  # noqa: E731
    levels = [{"name": r["name"], "stats": stats(r["ms"], pct), "branch": r["branch"]} for r in by("level")]
    emulated = bool(target.get("emulated"))  # (outputs are real; an emulator's timings are not latencies)
    for level in levels:
        level["budget_pass"] = None if budget is None or emulated else level["stats"][key] <= budget
    ops = (by("ops") or [None])[0]
    if ops:
        ops = {**ops, "per_run_ms": ops["total_ms"] / ops["runs"],
               "delegate_share": ops["delegated_ms"] / ops["total_ms"] if ops["total_ms"] else 0.0}
    report = {
        "target": target, "device": (by("device") or [{}])[0],
        "artifact": {"runtime": plan["runtime"], "mode": plan["mode"], "model": plan["model"]},
        "config": config.to_dict(), "levels": levels,
        "branches": [{"case": r["case"], "stats": stats(r["ms"], pct), "branch": r["branch"],
                      **{k: r[k] for k in ("max_abs_diff", "outputs_match") if k in r}}  # (the native runner checks)
                     for r in by("branch") if r["ms"]],
        "ops": ops, "memory": (by("memory") or [None])[0],
        "budget": None if budget is None else {
            "ms": budget, "percentile": pct, "pass": None if emulated else bool(levels) and levels[0]["budget_pass"],
            "passing_levels": [lv["name"] for lv in levels if lv["budget_pass"]],
            **({"why": "emulated: timings under an emulator are not latencies"} if emulated else {})},
        "complete": any(r["kind"] == "memory" for r in records),
        "emulated": emulated,
    }
    errors = by("error") or [{"message": f"the outputs differ from eager's on case {b['case']!r} (max abs diff "
                                         f"{b['max_abs_diff']}); the runtime or the runner is wrong for this artifact"}
                             for b in report["branches"] if b.get("outputs_match") is False][:1]
    if errors:
        report["error"] = errors[0]["message"]
    return report


def _etdump_ops(record: dict, t, results: Path, work: Path) -> dict:
    """The native runner's ETDump, fetched from the target and read here into an "ops" record."""
    from device.executorch import read_etdump

    try:
        local = t.pull(results, work / "pulled.etdump", ".etdump")
        return {"kind": "ops", "level": record["level"], "runs": record["runs"], "warmup": record["warmup"],
                **read_etdump([local])}
    except (EdgeError, OSError) as e:
        return {"kind": "ops-missing", "why": str(e)}


def profile(artifact: str | Path, target="local", config: ProfileConfig = ProfileConfig(),
            progress: bool = True) -> dict:
    """Measure `artifact` on `target` at every budget level of its plan (and each branch-forcing case):
    latency percentiles, the branch taken, the per-operator profile, peak memory, and PASS/FAIL of
    the first level (the artifact's default setting) against config.budget_ms at config.percentile.
    A failure part-way keeps the records measured so far (report["complete"] False, report["error"]).

    >>> import edge, export, profiler, tempfile
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> a = export.to_onnx(model, tempfile.mkdtemp() + "/m", batch, progress=False)
    >>> r = profiler.profile(a.path, "local", profiler.ProfileConfig(runs=5, budget_ms=1000), progress=False)
    >>> r["budget"]["pass"], r["levels"][0]["stats"]["n"]
    (True, 5)
    """
    from device.artifact import load_artifact

    t = target_for(target)  # (a bad target is refused before anything else is read)
    a = load_artifact(artifact)
    if config.runner != "python" and a.plan["runtime"] != "executorch":
        raise EdgeError(f"the {config.runner} runner runs ExecuTorch artifacts; {a.path} is a {a.plan['runtime']} artifact "
                        "(profile it with --runner python)")
    say = print if progress else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        results = work / "results.jsonl"
        seen = [0]

        def watch():
            if not results.exists():
                return
            records = read_records(results.read_text())  # (a line being written is not read yet)
            for r in records[seen[0]:]:
                if r["kind"] in ("level", "branch") and r["ms"]:  # (a branch with branch_runs 0 is only checked)
                    say(f"  {r['kind']} {r.get('name') or r.get('case')}: median {np.median(r['ms']):.2f} ms over {len(r['ms'])} runs")
            seen[0] = len(records)

        say(f"edge profile: {a.path} ({a.plan['runtime']}, {a.plan['mode']} mode) on {t.spec} with the {config.runner} runner, "
            f"{len(a.plan['budget_levels'])} budget levels, {config.runs} runs each ...")
        if config.runner == "python" and a.plan["runtime"] == "executorch":
            say("  (the python runner adds Python's own cost to every method call, and the routed "
                "mode makes dozens a run; --runner native times what a board or a phone runs)")
        remote = t.push(a.path, work)
        command = t.command(config.runner)
        error = None
        try:
            t.run(command, remote, results, config.options(), config.timeout_s, watch if progress else None)
        except EdgeError as e:
            error = str(e)
        try:  # after a failure too: the records measured so far are kept
            local = t.pull(results, work / "pulled.jsonl")
            records = read_records(local.read_text())
        except (EdgeError, OSError):
            if error is None:
                raise
            records = []
        records = [_etdump_ops(r, t, results, work) if r["kind"] == "etdump" else r for r in records]
    report = summarize(records, config, a.plan, t.describe())
    if error:
        report["error"] = error
    if not report["levels"]:
        raise EdgeError(report.get("error") or f"profiling {a.path} on {t.spec} gave no measurement")
    return report
