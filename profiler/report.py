"""A profile report as files: report.json, a readable table (report.txt) and latency.png (latency at
each budget level against the budget), written together into one directory, atomically."""
from __future__ import annotations

import json
from pathlib import Path

from edge.files import atomic_dir


def table(report: dict) -> str:
    pct = report["config"]["percentile"]
    key = f"at_p{pct:g}"
    a, d = report["artifact"], report.get("device") or {}
    lines = [f"{a['model']['type']} ({a['runtime']}, {a['mode']} mode) on {report['target']['target']}: "
             f"{d.get('cpu', '?')}, {d.get('threads', '?')} thread(s), {d.get('runtime')} {d.get('runtime_version', '')}"
             f" ({d.get('runner', 'python')} runner)",
             *(["EMULATED: the outputs are checked; the timings are an emulator's, not latencies"] if report.get("emulated") else []),
             "", f"{'level':<16}{'p50 ms':>9}{'p90':>9}{'p99':>9}{'min':>9}{'max':>9}  {'exit':>4} {'skipped':<10}{'units':>6}  budget"]
    budget = report["budget"]

    def row(name, s, b, verdict=""):
        units = b.get("acm_fraction", b.get("moe_fraction"))  # (the share of learners or experts run)
        acm = "-" if units is None else f"{units:.2f}"
        skipped = ",".join(map(str, b["skipped"])) or "-"
        return (f"{name[:15]:<16}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['min']:>9.2f}{s['max']:>9.2f}"
                f"  {b['exit_layer']:>4} {skipped:<10}{acm:>6}  {verdict}")

    for lv in report["levels"]:
        verdict = "" if lv["budget_pass"] is None else ("PASS" if lv["budget_pass"] else "FAIL")
        lines.append(row(lv["name"], lv["stats"], lv["branch"], verdict))
    if report["branches"]:
        lines += ["", "per branch (forced through the knobs):"]
        lines += [row(b["case"], b["stats"], b["branch"], "" if "outputs_match" not in b else
                      f"{'=' if b['outputs_match'] else 'DIFFERS'} eager (max diff {b['max_abs_diff']:.1e})")
                  for b in report["branches"]]
    ops = report.get("ops")
    if ops:
        lines += ["", f"operators at level {ops['level']!r} ({ops['per_run_ms']:.2f} ms per run profiled, "
                      f"{100 * ops['delegate_share']:.0f} % in a delegate; backends: {', '.join(ops['backends'])}):"]
        lines += [f"  {o['op'][:40]:<42}{o['backend'][:20]:<22}{o['ms'] / ops['runs']:>8.3f} ms/run  {o['calls'] // ops['runs']:>5} calls/run"
                  for o in ops["ops"][:12]]
    if report.get("memory"):
        m = report["memory"]
        lines += ["", f"peak memory {m['peak_rss_mb']:.0f} MB (process; {m['rss_at_start_mb']:.0f} MB before the artifact loaded)"]
    if budget and budget["pass"] is None:
        lines += ["", f"no verdict against the budget of {budget['ms']:g} ms: {budget.get('why', 'nothing measured')}"]
    elif budget:
        verdict = "PASS" if budget["pass"] else "FAIL"
        lines += ["", f"{verdict}: level {report['levels'][0]['name']!r} p{pct:g} "
                      f"{report['levels'][0]['stats'][key]:.2f} ms against a budget of {budget['ms']:g} ms"]
    if report.get("error"):
        lines += ["", f"INCOMPLETE: {report['error']}"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pct = report["config"]["percentile"]
    levels = report["levels"]
    names = [lv["name"] for lv in levels]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(levels))
    ax.plot(x, [lv["stats"]["p50"] for lv in levels], "o-", label="p50")
    ax.plot(x, [lv["stats"][f"at_p{pct:g}"] for lv in levels], "s--", label=f"p{pct:g}")
    ax.fill_between(x, [lv["stats"]["min"] for lv in levels], [lv["stats"]["max"] for lv in levels], alpha=0.2, label="min..max")
    if report["budget"]:
        ax.axhline(report["budget"]["ms"], color="red", label=f"budget {report['budget']['ms']:g} ms")
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{report['artifact']['runtime']} on {report['target']['target']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: dict, out: str | Path, overwrite: bool = False) -> None:
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.txt").write_text(table(report))
        plot(report, tmp / "latency.png")
