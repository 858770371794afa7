"""Lower an adaptive model to a runtime with its control flow in the graph, bundle inputs that force
every branch, and check the artifact against eager PyTorch on all of them."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import edge
from edge.errors import EdgeError
from edge.acm import FORCE
from edge.files import atomic_dir, sha256
from edge.parts import TRANSFORMS, knobs_of, parts
from device.artifact import CHECKS, PLAN_FORMAT, PLAN_VERSION, TOKENIZER, Artifact, load_artifact
from device.runtime import MODES, RUNTIMES
from export.artifact import write_plan
from export.graph import GraphModel
from export.routed import Routed, Segment
from export.runtime import LOWERINGS

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
    from its threshold (GraphModel._decide, _choose_k); with `follow` ({"exit_layer", "skipped", "ks"}
    as an artifact returned them) each decision takes that branch, and `followed` says where that
    went against eager's own choice."""
    graph.margins, graph.follow = [], follow
    try:
        with torch.no_grad():
            out = [t.detach() for t in graph(*args, *knobs)]
        return out, graph.margins
    finally:
        graph.margins, graph.follow = None, None


def away_from_ties(graph: GraphModel, args: list[torch.Tensor], cases: list) -> list:
    """The cases with each non-forcing gate-bias step moved (by up to +-0.1) where the example input
    has a token within 10 x NEAR_TIE of another k: the checks should test branches, not rounding.
    The model's own setting is kept as it is (its near-ties are reported by verify)."""
    out = []
    for name, knobs in cases:
        if name.startswith("gate bias ") and abs(float(name.split()[-1])) < FORCE:
            step = float(name.split()[-1])
            for delta in (0.0, 0.01, -0.01, 0.02, -0.02, 0.05, -0.05, 0.1, -0.1):
                bias = knobs["gate_bias"] + delta
                got = margins(graph, args, [*{**knobs, "gate_bias": bias}.values()])[1]
                if min((m for n, m, _ in got if n.startswith("acm")), default=1.0) >= 10 * NEAR_TIE:
                    name, knobs = f"gate bias {step + delta:+g}", {**knobs, "gate_bias": bias}
                    break
        out.append((name, knobs))
    return out


def bmm_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """transformers' eager attention (matmul, softmax, matmul) on 3-D batched matmuls, (B, H, T, d) as
    (B*H, T, d): a 4-D matmul decomposes to expand_copy + bmm, and ExecuTorch runs the expand_copy
    on the portable kernels between XNNPACK's delegates. The same numbers; measured on MiniLM (128
    tokens, 1 thread, ExecuTorch): 24 portable kernels fewer, 0.97x the time, lowering in 0.55x."""
    b, h, t, d = query.shape
    s = key.shape[2]
    scale = d ** -0.5 if scaling is None else scaling
    w = torch.bmm(query.reshape(b * h, t, d), key.reshape(b * h, s, d).transpose(1, 2)) * scale
    if attention_mask is not None:  # (b, 1 or h, 1 or t, s), added in 3-D: a view (b, h, t, s) has two token
        m = attention_mask  # sizes, which XNNPACK cannot reshape to, and would cut its delegate in three
        m = m if m.shape[0] * m.shape[1] == 1 else m.expand(b, h, -1, -1)
        w = w + m.reshape(-1, m.shape[2], s)
    w = nn.functional.dropout(w.softmax(-1), p=dropout, training=module.training)
    out = torch.bmm(w, value.reshape(b * h, s, value.shape[-1]))
    return out.view(b, h, t, -1).transpose(1, 2).contiguous(), None


ATTENTION = "edge_bmm"  # bmm_attention's name in transformers' AttentionInterface


def exportable(model: nn.Module) -> nn.Module:
    """The model with edge's attention (bmm_attention), copied if it used another. Not SDPA: its
    decomposition keeps a "safe softmax" (where/any over heads x T x T) that XNNPACK does not take,
    2.5 ms against 1.0 ms per MiniLM layer on ExecuTorch (128 tokens, 1 thread)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", ATTENTION) in (ATTENTION, None):
        return model
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, bmm_attention)  # (here, not at import: export needs no transformers)
    model = copy.deepcopy(model)
    model.set_attn_implementation(ATTENTION)
    return model


def _inputs(graph: GraphModel, example: dict) -> list[torch.Tensor]:
    missing = [n for n in graph.input_names if n not in example]
    if missing:
        raise EdgeError(f"the example input lacks {', '.join(missing)}; this model reads {', '.join(graph.input_names)}")
    return [example[n][:1] for n in graph.input_names]  # batch 1: the graph runs one input


def _spec(name: str, t: torch.Tensor, dynamic: dict | None = None) -> dict:
    spec = {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    if dynamic:
        spec["shape"][1] = "tokens"
        spec.update(dynamic)
    return spec


def without_unused_weights(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`ep` without the parameters, buffers and constants its graph never reads. A segment is traced
    as a module holding the whole model, so torch.export lifts all its weights into every method
    (MiniLM: 189, of which a gate's segment reads 14), and each runtime's decompositions and passes
    walk them all (ExecuTorch drops them only after decomposing): MiniLM's routed export, 29 methods,
    exported to ExecuTorch in 115 s instead of 133 s (one core)."""
    from torch.export.graph_signature import ExportGraphSignature, InputKind

    weights = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    unused = {s.arg.name: s.target for s in ep.graph_signature.input_specs
              if s.kind in weights and not placeholders[s.arg.name].users}
    if not unused:
        return ep
    gm = ep.graph_module
    for name in unused:
        gm.graph.erase_node(placeholders[name])
    gm.recompile()
    gone = set(unused.values())
    signature = ExportGraphSignature([s for s in ep.graph_signature.input_specs if s.arg.name not in unused],
                                     ep.graph_signature.output_specs)
    return torch.export.ExportedProgram(
        gm, gm.graph, signature, {k: v for k, v in ep.state_dict.items() if k not in gone}, ep.range_constraints,
        ep.module_call_graph, ep.example_inputs, {k: v for k, v in ep.constants.items() if k not in gone},
        verifiers=ep.verifiers)


def _trace(graph: GraphModel, mode: str, args: list[torch.Tensor], own: dict, max_tok: int) -> tuple[dict, dict]:
    """({method: ExportedProgram}, the plan's extra section): the whole graph as "forward" (graph
    mode) or one per segment and per ACM (its learners) plus {"routed": ...} (routed mode); the token dimension is
    dynamic in 2..max_tok for sequence models."""
    arch = graph.arch
    tokens = torch.export.Dim("tokens", min=2, max=max_tok) if arch.seq_inputs else None
    seq = set(arch.seq_inputs) | ({"h", "y"} if tokens is not None else set())
    if mode == "graph":
        dynamic = [{1: tokens} if n in seq else None for n in graph.input_names] + [None] * len(own)
        return {"forward": torch.export.export(graph, (*args, *own.values()), dynamic_shapes={"args": tuple(dynamic)})}, {}
    routed = Routed(graph)
    h = arch.embed(graph.model, dict(zip(graph.input_names, args)))[0].contiguous()  # (a permuted h would
    # give the methods that dim order: ExecuTorch then fails on the driver's contiguous arrays)
    example = {**dict(zip(graph.input_names, args)), "h": h, "y": torch.zeros_like(h), "gate_bias": torch.zeros(1)}
    most = max_tok if tokens is not None else h.shape[1]
    eps = {}
    for name, module in routed.modules.items():
        if isinstance(module, Segment):
            inputs = [example[n] for n in module.inputs]
            dynamic = {"args": tuple({1: tokens} if n in seq else None for n in module.inputs)}
        else:  # an ACM's learners, each on its own gathered tokens (rows_j, d)
            n = len(module.learners)
            inputs = [h[0].clone() for _ in range(n)]  # (one tensor passed n times would be traced as one input)
            dynamic = {"xs": tuple({0: torch.export.Dim(f"rows{j}", min=1, max=most)} for j in range(n))}
        eps[name] = without_unused_weights(torch.export.export(module, tuple(inputs), dynamic_shapes=dynamic))
    return eps, {"routed": routed.section()}


def budget_levels(model: nn.Module, original: nn.Module, calib: list[dict],
                  budgets: tuple[float, ...] = (1.0, 0.75, 0.5)) -> list[dict]:
    """The plan's budget levels: for each FLOP budget (a fraction of the original model's FLOPs), the
    knob setting that edge.set_budget_ would pick on `calib` (one sweep serves every budget), with
    the FLOPs and quality it measured there. Pass the result to to_runtime(levels=...)."""
    from edge.budget import Setting, apply_setting_, best_within, sweep

    for b in budgets:
        if not (isinstance(b, (int, float)) and 0.0 < b <= 1.0):
            raise EdgeError(f"a budget level must be in (0, 1], got {b!r}")
    rows = sweep(copy.deepcopy(model), original, calib)
    levels = []
    for b in sorted(set(budgets), reverse=True):
        best = best_within(rows, b)
        m = copy.deepcopy(model)
        apply_setting_(m, Setting(best["exit_threshold"], best["skip_threshold"], best["acm_budget"]), calib)
        knobs = GraphModel(m).knobs()
        levels.append({"name": f"budget {b:g}", "budget": b, "flops_frac": round(best["flops_frac"], 4),
                       "calib_quality": round(best["quality"], 4), **{k: v.tolist() for k, v in knobs.items()}})
    return levels


def _check_levels(levels: list[dict], own: dict) -> list[dict]:
    bad = [k for k, v in own.items() if not torch.isfinite(v).all()]
    if bad:
        raise EdgeError(f"the model's own {', '.join(bad)} is not finite ({', '.join(str(own[k].tolist()) for k in bad)}); "
                        "set its budget again (edge.set_budget_ or edge.calibrate_budget_)")
    for level in levels:
        if not all(np.isfinite(np.asarray(level.get(k, 0.0), dtype=float)).all() for k in own):
            raise EdgeError(f"budget level {level.get('name')!r} has a knob that is not finite")
        bad = [k for k, v in own.items() if k not in level or torch.tensor(level[k]).shape != v.shape]
        if not isinstance(level.get("name"), str) or bad:
            raise EdgeError(f"budget level {level.get('name')!r} must have a name and the knobs "
                            f"{', '.join(f'{k} {tuple(v.shape)}' for k, v in own.items())}; wrong: {', '.join(bad) or 'name'}")
    return levels


def plan_of(graph: GraphModel, model: nn.Module, runtime: str, mode: str, methods: dict[str, str],
            args: list[torch.Tensor], section: dict, levels: list[dict]) -> dict:
    """The plan's description of the program (all but its checks and file hashes): what every driver
    (device.driver.drive, the native runner, the Android demo's interpreter) reads."""
    arch = graph.arch
    dynamic = arch.seq_inputs and RUNTIMES.get(runtime).dynamic_tokens  # (else the example's token count, fixed)
    dyn = {"min": 2, "max": int(getattr(model.config, "max_position_embeddings", 512))} if dynamic else None
    return {
        "format": PLAN_FORMAT, "version": PLAN_VERSION, "edge_version": edge.__version__,
        "runtime": runtime, "mode": mode, "methods": methods,
        "model": {"type": model.config.model_type, "architecture": arch.name, "layers": len(graph.layers),
                  "output_kind": arch.output_kind(model)},
        "inputs": [_spec(n, a, dyn if n in arch.seq_inputs else None) for n, a in zip(graph.input_names, args)],
        "knobs": [_spec(k, v) for k, v in graph.knobs().items()],
        "outputs": graph.output_names(),
        # every knob transform's section (empty where the model does not have it), from its registration
        "control_flow": {t.knob.plan_key: t.knob.plan(model) if parts(model).has(t.name) else []
                         for _, t in TRANSFORMS.items() if t.knob is not None},
        **section,
        "budget_levels": levels,
    }


def to_runtime(model: nn.Module, runtime: str, out: str | Path, example: dict, overwrite: bool = False,
               progress: bool = True, mode: str | None = None, levels: list[dict] | None = None,
               tokenizer=None) -> Artifact:
    """Export `model` (with its exits, skip routers and ACMs) to `runtime`, keeping the control flow,
    into directory `out` (written atomically): the program, plan.json and checks.safetensors (inputs
    forcing every branch, with eager PyTorch's outputs). mode "graph": one program with the control
    flow inside (cond/If, gathers); "routed": plain segments between the gates, run by the plan's
    driver (export.routed); None: the runtime's default (the faster one, measured). levels: the
    budget levels a profiler sweeps (budget_levels(...)); default: the model's own setting. tokenizer:
    saved into the artifact (tokenizer/) for runners that start from text. The export fails, writing nothing, if the artifact differs from eager on
    any branch.

    >>> import edge, tempfile, export
    >>> model, batch = edge.ARCHS.get("bert").tiny("bert")
    >>> m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=1), [batch], progress=False)
    >>> a = export.to_onnx(m, tempfile.mkdtemp() + "/m", batch, progress=False)
    >>> [c["exit_layer"] for c in a.plan["checks"]]
    [2, 2, 1]
    """
    rt = RUNTIMES.get(runtime)
    mode = mode or rt.mode
    if mode not in MODES:
        raise EdgeError(f"unknown export mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode not in rt.modes:
        raise EdgeError(f"{runtime} takes the {' and '.join(rt.modes)} mode{'s' * (len(rt.modes) > 1)} only, not {mode}; "
                        f"export with mode {rt.modes[0]!r} (--mode {rt.modes[0]})")
    say = print if progress else (lambda *a, **k: None)
    graph = GraphModel(exportable(model), rt.spare_rows)
    args = _inputs(graph, example)
    own = graph.knobs()
    levels = _check_levels(levels or [{"name": "exported", **{k: v.tolist() for k, v in own.items()}}], own)
    arch = graph.arch
    n_tok = args[0].shape[1] if arch.seq_inputs else None
    max_tok = int(getattr(model.config, "max_position_embeddings", 512))
    if n_tok is not None and not 2 <= n_tok <= max_tok:
        raise EdgeError(f"the example input has {n_tok} tokens; this model takes 2..{max_tok}")
    t0 = time.time()
    say(f"edge export: tracing {type(model).__name__} ({len(graph.layers)} layers, {len(graph.heads)} exits, "
        f"{len(graph.routers)} routers, {len(graph.acm_index)} ACMs) for {runtime}, {mode} mode ...")
    try:
        with torch.no_grad():
            eps, section = _trace(graph, mode, args, own, max_tok)
    except Exception as e:  # torch.export's errors are pages long: one line, and the cause for a bug report
        raise EdgeError(f"torch.export could not trace this model ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:300]}); nothing was written") from e
    cases = away_from_ties(graph, args, force_cases(graph))
    runs = [margins(graph, args, list(k.values())) for _, k in cases]
    expected = [out for out, _ in runs]
    out = Path(out)
    with atomic_dir(out, overwrite) as tmp:
        say(f"edge export: lowering {len(eps)} method{'s' * (len(eps) > 1)} to {runtime} ...")
        methods = LOWERINGS.get(runtime)(eps, tmp, mode == "graph")
        tensors = {f"input.{n}": a.clone() for n, a in zip(graph.input_names, args)}
        checks = []
        for c, ((name, knobs), outs) in enumerate(zip(cases, expected)):
            tensors.update({f"case{c}.{k}": v.clone() for k, v in knobs.items()})
            tensors.update({f"case{c}.expected.{o}": v.clone() for o, v in zip(graph.output_names(), outs)})
            closest = min((m for _, m, _ in runs[c][1]), default=None)  # (the nearest any decision came to a tie)
            checks.append({"case": name, "exit_layer": int(outs[1]), "skipped": [int(s) for s in outs[2]],
                           **({"margin": closest} if closest is not None and closest != float("inf") else {})})
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / CHECKS))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER))
        extra = sorted(str(f.relative_to(tmp)) for f in (tmp / TOKENIZER).rglob("*") if f.is_file()) if tokenizer is not None else []
        plan = {
            **plan_of(graph, model, runtime, mode, methods, args, section, levels),
            "checks": checks, "tolerance": TOLERANCE, "near_tie": NEAR_TIE,
            **({"tokenizer": TOKENIZER} if tokenizer is not None else {}),
            "files": {f: sha256(tmp / f) for f in sorted({*methods.values(), CHECKS, *extra})},
        }
        plan = write_plan(tmp, plan)
        say(f"edge export: checking {len(cases)} branch-forcing cases against eager ...")
        try:
            report = verify(Artifact(tmp, plan), eager=graph)
        except EdgeError as e:
            raise EdgeError(f"{e}; nothing was written to {out}") from None
    ties = report["near_threshold"]
    say(f"edge export: wrote {out} in {time.time() - t0:.1f} s (max abs diff {report['max_abs_diff']:.1e} over {len(cases)} cases"
        + (f"; {len(ties)} near-tie{'s' * (len(ties) > 1)}, compared along the artifact's branch: "
           + "; ".join(f"{t['case']}: {', '.join(t['decisions'])} within {t['margin']:.1e}" for t in ties) if ties else "")
        + ")")
    return load_artifact(out)


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
