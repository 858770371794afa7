"""Budget presets: the knob setting of an artifact chosen, from measurements on a target, as the most
accurate one that meets a latency budget; saved as YAML (profiles/*.yaml) and applied at run time.

    preset, front = choose(artifact, "local", budget_ms=12)      # measures latency and quality
    save_preset(preset, "profiles/minilm-host-interactive.yaml")
    run(inputs + apply_preset(load_preset(path), artifact))      # the knobs, in the plan's order
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import Config, config, integer, mapping_of, real, sequence_of, setting, text
from edge.errors import EdgeError

QUALITY = {"embedding": "cos_to_full", "logits": "agreement_with_full"}


@config("preset")
@dataclass(frozen=True)
class Preset(Config):
    """name; target ("local", ...) and device (what it was measured on); runtime, mode, threads;
    budget_ms at percentile; level: the plan's budget level chosen and knobs: its knob values;
    latency_ms: measured at that percentile; quality: measured on held-out inputs against the
    artifact's full path (quality_metric); measured: the date; edge_version; artifact: the SHA-256 of
    the plan it belongs to."""

    name: str = setting(text())
    target: str = setting(text())
    device: str = setting(text())
    runtime: str = setting(text())
    mode: str = setting(text())
    threads: int = setting(integer(1))
    budget_ms: float = setting(real(0, 1e6, low_open=True))
    percentile: float = setting(real(0, 100, low_open=True))
    level: str = setting(text())
    knobs: dict[str, tuple[float, ...]] = setting(mapping_of(text(), sequence_of(real())))
    latency_ms: float = setting(real(0, 1e6, low_open=True))
    quality: float = setting(real())
    quality_metric: str = setting(text())
    measured: str = setting(text())
    edge_version: str = setting(text())
    artifact: str = setting(text())


def save_preset(preset: Preset, path: str | Path) -> Path:
    """Write the preset as YAML, atomically (a temporary file, then a rename)."""
    import yaml

    from edge.files import write_atomic

    path = Path(path)
    write_atomic(path, lambda tmp: tmp.write_text(yaml.safe_dump(preset.to_dict(), sort_keys=False)))
    return path


def load_preset(path: str | Path) -> Preset:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"{path}: no such preset file; `edge preset list` shows the presets in profiles/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EdgeError(f"{path} is not a text file; a preset is YAML written by `edge preset choose`") from None
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise EdgeError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix it or choose the preset again") from None
    if not isinstance(data, dict):
        raise EdgeError(f"{path}: a preset must be a YAML mapping of its fields")
    try:
        return Preset.from_dict(data)
    except EdgeError as e:
        raise EdgeError(f"{path}: {e}") from None


def apply_preset(preset: Preset, artifact) -> list[np.ndarray]:
    """The preset's knobs as the artifact's knob inputs (in the plan's order); refuses a preset made
    for another artifact."""
    from device.artifact import load_artifact, plan_digest

    a = artifact if hasattr(artifact, "plan") else load_artifact(artifact)
    if preset.artifact != plan_digest(a.plan):
        raise EdgeError(f"preset {preset.name!r} was chosen for another artifact (plan digest differs); "
                        "choose it again for this one with `edge preset choose`")
    return [np.asarray(preset.knobs[s["name"]], dtype=np.float32).reshape(s["shape"]) for s in a.plan["knobs"]]


def level_quality(artifact, inputs: list[list[np.ndarray]], threads: int = 1) -> dict[str, float]:
    """Quality of every budget level on held-out inputs (lists of the model's input arrays), against
    the artifact's own full path (every exit closed, every router open, every learner run): mean
    cosine for embeddings, argmax agreement for logits. Runs here, with the artifact itself."""
    from edge.acm import FORCE
    from device.measure import knob_arrays

    a = artifact
    plan = a.plan
    run = a.runner(threads)
    every_gate_open = {"exit_thresholds": 1.0, "skip_thresholds": 0.0, "gate_bias": -FORCE,  # (k = N everywhere)
                       "experts": -FORCE}  # (every expert priced in; its K set below)
    full_knobs = [np.full(s["shape"], every_gate_open[s["name"]], dtype=np.float32) for s in plan["knobs"]]
    for s, k in zip(plan["knobs"], full_knobs):
        if s["name"] == "experts":  # rows [K, price of each expert]: K = E
            k[:, 0] = s["shape"][1] - 1
    full = np.concatenate([run(x + full_knobs)[0] for x in inputs])
    kind = plan["model"]["output_kind"]
    out = {}
    for level in plan["budget_levels"]:
        got = np.concatenate([run(x + knob_arrays(plan, level))[0] for x in inputs])
        if kind == "logits":
            out[level["name"]] = float((got.argmax(-1) == full.argmax(-1)).mean())
        else:
            cos = (got * full).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(full, axis=-1) + 1e-12)
            out[level["name"]] = float(cos.mean())
    return out


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both latency (lower) and quality (higher), fastest first."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["latency_ms"], -p["quality"])):
        if p["quality"] > best:
            front.append(p)
            best = p["quality"]
    return front


def choose(artifact, target: str, budget_ms: float, inputs: list[list[np.ndarray]], percentile: float = 90.0,
           runs: int = 30, threads: int = 1, name: str | None = None, progress: bool = True,
           runner: str = "python") -> tuple[Preset, list[dict]]:
    """Sweep the artifact's budget levels on `target` (latency at `percentile`) and on held-out
    `inputs` here (quality), and pick the most accurate level whose latency meets `budget_ms`.
    Returns (preset, points), points: every level's {level, latency_ms, quality, pareto}."""
    import edge
    from profiler.profiling import ProfileConfig, profile
    from device.artifact import load_artifact, plan_digest

    a = artifact if hasattr(artifact, "plan") else load_artifact(artifact)
    if not inputs:
        raise EdgeError("choosing a preset needs held-out inputs to measure quality on")
    config = ProfileConfig(runs=runs, threads=threads, budget_ms=budget_ms, percentile=percentile,
                                    ops=False, branch_runs=0, runner=runner)
    report = profile(a.path, target, config, progress=progress)
    if report["emulated"]:
        raise EdgeError(f"{target} runs the artifact under an emulator: its timings are not latencies, so no preset "
                        "can be chosen from them; profile on the real device")
    quality = level_quality(a, inputs, threads)
    key = f"at_p{percentile:g}"
    points = [{"level": lv["name"], "latency_ms": lv["stats"][key], "quality": quality[lv["name"]]}
              for lv in report["levels"]]
    front = {p["level"] for p in pareto(points)}
    for p in points:
        p["pareto"] = p["level"] in front
    ok = [p for p in points if p["latency_ms"] <= budget_ms]
    if not ok:
        fastest = min(points, key=lambda p: p["latency_ms"])
        raise EdgeError(f"no budget level meets {budget_ms:g} ms at p{percentile:g} on {target}: the fastest, "
                        f"{fastest['level']!r}, takes {fastest['latency_ms']:.2f} ms; raise the budget or export "
                        "with lower budget levels (edge export --budgets ...)")
    best = max(ok, key=lambda p: (p["quality"], -p["latency_ms"]))
    level = next(lv for lv in a.plan["budget_levels"] if lv["name"] == best["level"])
    device = report["device"]
    preset = Preset(
        name=name or default_name(a.plan, target, budget_ms),
        target=target, device=f"{device.get('cpu', '?')} ({device.get('machine', '?')}, {device.get('cores', '?')} cores)",
        runtime=f"{a.plan['runtime']} {device.get('runtime_version', '')}".strip()
        + (" (native runner)" if runner == "native" else ""), mode=a.plan["mode"],
        threads=threads, budget_ms=float(budget_ms), percentile=float(percentile), level=best["level"],
        knobs={s["name"]: [float(v) for v in np.ravel(level[s["name"]])] for s in a.plan["knobs"]},
        latency_ms=round(best["latency_ms"], 4), quality=round(best["quality"], 5),
        quality_metric=QUALITY[a.plan["model"]["output_kind"]], measured=datetime.date.today().isoformat(),
        edge_version=edge.__version__, artifact=plan_digest(a.plan))
    return preset, points


def choose_preset(artifact, target: str, budget_ms: float, passages, texts: int = 64, percentile: float = 90.0,
                  runs: int = 30, threads: int = 1, name: str | None = None, out: str | Path | None = None,
                  overwrite: bool = False, progress: bool = True, runner: str = "python") -> tuple[Preset, list[dict], Path]:
    """`edge preset choose`: `choose` with quality measured on the first `texts` held-out passages
    of `passages` (edge.data.Passages, read with the artifact's own tokenizer), then the preset
    written to `out` (default profiles/NAME.yaml, NAME by default model-runtime-target-budget) and
    a plot of the front beside it (.png). Both outputs are checked before anything is measured.
    Returns (preset, points, the preset's path)."""
    from edge.files import check_output
    from device.artifact import load_artifact
    from export.inputs import artifact_inputs

    a = artifact if hasattr(artifact, "plan") else load_artifact(artifact)
    name = name or default_name(a.plan, target, budget_ms)
    path = Path(out) if out else preset_file(name)  # (a plain name: inside profiles/)
    check_output(path, overwrite, "file")
    check_output(path.with_suffix(".png"), overwrite, "file")
    preset, points = choose(a, target, budget_ms, artifact_inputs(a, passages, texts), percentile, runs, threads, name,
                            progress=progress, runner=runner)
    save_preset(preset, path)
    plot_front(points, preset, path.with_suffix(".png"))
    return preset, points, path


def list_presets(directory: str | Path = "profiles") -> list[Preset]:
    """The presets in `directory` (its *.yaml files), by file name."""
    root = Path(directory)
    files = sorted(root.glob("*.yaml")) if root.is_dir() else []
    if not files:
        raise EdgeError(f"no presets in {root}; make one with `edge preset choose`")
    return [load_preset(f) for f in files]


def default_name(plan: dict, target: str, budget_ms: float) -> str:
    """model-runtime-target-budget, every part reduced to letters, digits and _ . + - (a file name, never a path)."""
    import re

    parts = [str(plan["model"]["type"]), str(plan["runtime"]), target.split(":")[0], f"{budget_ms:g}ms"]
    return "-".join(re.sub(r"[^A-Za-z0-9_.+]", "_", p).strip(".") or "_" for p in parts)


def preset_file(name: str, directory: str | Path = "profiles") -> Path:
    """Where a preset named `name` goes when no file is given: DIRECTORY/NAME.yaml; the name must be
    a plain name (no separator, no leading dot), so the file stays in that directory."""
    from device.artifact import safe_name

    return Path(directory) / f"{safe_name(name, 'the preset name')}.yaml"


def plot_front(points: list[dict], preset: Preset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([p["latency_ms"] for p in points], [p["quality"] for p in points], c="gray", label="budget levels")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["latency_ms"])
    ax.plot([p["latency_ms"] for p in front], [p["quality"] for p in front], "b-o", label="Pareto front")
    for p in points:
        ax.annotate(p["level"], (p["latency_ms"], p["quality"]), fontsize=7)
    ax.axvline(preset.budget_ms, color="red", label=f"budget {preset.budget_ms:g} ms")
    ax.scatter([preset.latency_ms], [preset.quality], marker="*", s=200, c="gold", edgecolors="k", label="chosen", zorder=3)
    ax.set_xlabel(f"latency p{preset.percentile:g} (ms) on {preset.target}")
    ax.set_ylabel(preset.quality_metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from edge.files import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
