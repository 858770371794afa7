"""The parity checks of an export: knob settings that force every branch (`force_cases`, from each
transform's registered knob), eager's margin from every decision's threshold, and `verify`, which runs
an artifact on its bundled checks and compares the output AND the branch taken with eager PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from device.artifact import Artifact, load_artifact
from edge.acm import FORCE
from edge.errors import EdgeError
from edge.parts import knobs_of
from export.graph import GraphModel

TOLERANCE = 1e-4  # fp32: max abs difference of the output against eager
# a decision whose score lies within NEAR_TIE of its threshold (an ACM token: of its next-best k) may go
# either way between two correct fp32 programs: the runtimes' kernels sum in other orders than eager's
# (their outputs differ from eager's by ~1e-7, their scores alike), so such a branch is reported as a
# near-tie and its output compared along the branch the artifact took, recomputed in eager
NEAR_TIE = 1e-4


def force_cases(graph: GraphModel) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Knob settings that, together, take every branch: the model's own setting; the full path; then
    each installed transform's forcing cases (edge.parts.Knob.cases: each exit taken alone, each skip
    taken alone and all together, ACM gate biases from "every token runs no learner" to "every token
    runs all"), the other knobs at the full path."""
    own, knobs = graph.knobs(), knobs_of(graph.model)
    full = {k.name: k.full(graph.model) for _, k in knobs}
    cases = [("own", own), ("full", full)]
    for _, k in knobs:
        cases += [(name, {**full, k.name: value}) for name, value in k.cases(graph.model, full[k.name])]
    return cases


def margins(graph: GraphModel, args: list[torch.Tensor], knobs: list[torch.Tensor], follow: dict | None = None):
    """(outputs, [(decision, margin, followed)]) of eager `graph` on one case: every decision's distance
    from its threshold (GraphModel._decide, _choose); with `follow` ({"exit_layer", "skipped", "ks"}
    as an artifact returned them) each decision takes that branch, and `followed` says where that
    went against eager's own choice."""
    graph.margins, graph.follow = [], follow
    try:
        with torch.no_grad():
            out = [t.detach() for t in graph(*args, *knobs)]
        return out, graph.margins
    finally:
        graph.margins, graph.follow = None, None


def away_from_ties(graph: GraphModel, args: list[torch.Tensor], cases: list, near: float = NEAR_TIE) -> list:
    """The cases with each non-forcing gate-bias step moved (by up to +-0.1) where the example input
    has a token within 10 x `near` (the plan's near-tie epsilon) of another k: the checks should test branches, not rounding.
    The model's own setting is kept as it is (its near-ties are reported by verify)."""
    out = []
    for name, knobs in cases:
        if name.startswith("gate bias ") and abs(float(name.split()[-1])) < FORCE:
            step = float(name.split()[-1])
            for delta in (0.0, 0.01, -0.01, 0.02, -0.02, 0.05, -0.05, 0.1, -0.1):
                bias = knobs["gate_bias"] + delta
                got = margins(graph, args, [*{**knobs, "gate_bias": bias}.values()])[1]
                if min((m for n, m, _ in got if n.startswith("acm")), default=1.0) >= 10 * near:
                    name, knobs = f"gate bias {step + delta:+g}", {**knobs, "gate_bias": bias}
                    break
        out.append((name, knobs))
    return out


def _same(got: np.ndarray, expected: torch.Tensor) -> bool:
    """One branch output (exit_layer, skipped, ks) of the artifact equal to eager's."""
    return np.array_equal(got.astype(np.int64), expected.numpy().astype(np.int64))


def verify(artifact: Artifact | str | Path, model: nn.Module | None = None, eager: GraphModel | None = None) -> dict:
    """Run the artifact on its bundled branch-forcing inputs and compare the output AND the branch
    taken (exit layer, skipped layers, learners per token) with eager PyTorch: the bundled expected
    outputs, or `model` itself when given (recomputed). A case whose branch differs only at decisions
    that eager makes within the plan's near_tie of their thresholds is a near-tie, not a mismatch:
    with the eager model at hand (`model`, or `eager`, its GraphModel) its output is recomputed along
    the branch the artifact took and compared; without it, the bundled margin says whether the case
    came that close, and its output is not compared. Returns {"cases", "max_abs_diff",
    "branch_mismatches", "near_threshold": [{"case", "decisions", "margin"}], "k_seen"}; raises
    EdgeError above the tolerance or on any other branch mismatch."""
    a = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    plan, run = a.plan, a.runner()
    t = {k: torch.from_numpy(v) for k, v in a.checks().items()}
    args = [t[f"input.{s['name']}"] for s in plan["inputs"]]
    graph = eager if eager is not None else (GraphModel(model) if model is not None else None)
    near = float(plan.get("near_tie", 0.0))
    worst, mismatches, ties, k_seen = 0.0, [], [], set()
    for c, check in enumerate(plan["checks"]):
        knobs = [t[f"case{c}.{s['name']}"] for s in plan["knobs"]]
        if model is None:
            expected = [t[f"case{c}.expected.{o}"] for o in plan["outputs"]]
        else:
            expected = margins(graph, args, knobs)[0]
        got = run([x.numpy() for x in (*args, *knobs)])
        differ = [name for name, g, e in zip(plan["outputs"][1:], got[1:], expected[1:]) if not _same(g, e)]
        if not differ:
            worst = max(worst, float(np.abs(got[0] - expected[0].numpy()).max()))
        elif graph is not None:  # recompute eager along the artifact's branch: a near-tie, or a real mismatch
            taken = dict(zip(plan["outputs"], got))
            follow = {"exit_layer": int(taken["exit_layer"][0]), "skipped": [bool(v) for v in taken["skipped"]],
                      "ks": taken.get("ks")}
            along, noted = margins(graph, args, knobs, follow)
            followed = [(n, m) for n, m, f in noted if f]
            if all(_same(g, e) for g, e in zip(got[1:], along[1:])) and followed and max(m for _, m in followed) <= near:
                ties.append({"case": check["case"], "decisions": [n for n, _ in followed],
                             "margin": max(m for _, m in followed)})
                worst = max(worst, float(np.abs(got[0] - along[0].numpy()).max()))
            else:
                mismatches += [f"{check['case']}: {name}" for name in differ]
        elif check.get("margin") is not None and check["margin"] <= near:
            ties.append({"case": check["case"], "decisions": differ, "margin": check["margin"],
                         "output": "not compared (no eager model at hand)"})
        else:
            mismatches += [f"{check['case']}: {name}" for name in differ]
        if "ks" in plan["outputs"]:
            k_seen |= set(np.unique(got[plan["outputs"].index("ks")]).tolist())
    report = {"cases": len(plan["checks"]), "max_abs_diff": worst, "branch_mismatches": mismatches,
              "near_threshold": ties, "k_seen": sorted(k for k in k_seen if k >= 0)}
    if worst > plan["tolerance"] or mismatches:
        raise EdgeError(f"{a.path}: the artifact differs from eager PyTorch (max abs diff {worst:.2e}, "
                        f"tolerance {plan['tolerance']:.0e}; branch mismatches: {mismatches or 'none'}"
                        + (f"; near-ties within {near:.0e}: {len(ties)}" if ties else "") + ")")
    return report
