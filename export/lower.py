"""Lower an adaptive model to a runtime: trace it (one graph, or the routed segments), lower it with the
runtime's registered lowering, write the plan and the bundled branch-forcing checks (export.checks),
and verify the artifact against eager PyTorch on all of them before it is put in place."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import edge
from edge.errors import EdgeError
from edge.files import atomic_dir, sha256
from edge.parts import TRANSFORMS, parts
from device.artifact import CHECKS, PLAN_FORMAT, PLAN_VERSION, TOKENIZER, Artifact, load_artifact
from device.runtime import MODES, RUNTIMES
from export.artifact import write_plan
from export.attention import exportable
from export.checks import NEAR_TIE, TOLERANCE, away_from_ties, force_cases, margins, verify
from export.graph import GraphModel
from export.routed import Routed, Segment
from export.runtime import LOWERINGS, precisions

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
    mode) or one per segment and per adaptive FFN (its units) plus {"routed": ...} (routed mode); the token dimension is
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
    example = {**dict(zip(graph.input_names, args)), "h": h, "y": torch.zeros_like(h),
               **{name: knob[:1] for name, knob in own.items()}}  # (a gate piece reads its layer's row)
    most = max_tok if tokens is not None else h.shape[1]
    eps = {}
    for name, module in routed.modules.items():
        if isinstance(module, Segment):
            inputs = [example[n] for n in module.inputs]
            dynamic = {"args": tuple({1: tokens} if n in seq else None for n in module.inputs)}
        else:  # an adaptive FFN's units, each on its own gathered tokens (rows_j, d)
            n = len(module.units)
            inputs = [h[0].clone() for _ in range(n)]  # (one tensor passed n times would be traced as one input)
            dynamic = {"xs": tuple({0: torch.export.Dim(f"rows{j}", min=1, max=most)} for j in range(n))}
        eps[name] = without_unused_weights(torch.export.export(module, tuple(inputs), dynamic_shapes=dynamic))
    return eps, {"routed": routed.section()}


def plan_entries(model: nn.Module) -> dict:
    """The plan's entries the model's installed transforms add (edge.parts.Transform.plan)."""
    return {k: v for name in parts(model).names() if (t := TRANSFORMS.get(name)).plan is not None
            for k, v in t.plan(model).items()}


def tolerances(model: nn.Module) -> tuple[float, float]:
    """(output tolerance, near-tie epsilon) of the checks against eager: fp32's, or the loosest an
    installed transform states for itself (a quantized model's kernels round otherwise than eager)."""
    stated = [TRANSFORMS.get(n).tolerance(model) for n in parts(model).names() if TRANSFORMS.get(n).tolerance is not None]
    return max([TOLERANCE, *(t for t, _ in stated)]), max([NEAR_TIE, *(e for _, e in stated)])


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
                       "calib_quality": round(best["quality"], 4), **{k: v.reshape(-1).tolist() for k, v in knobs.items()}})
    return levels


def _check_levels(levels: list[dict], own: dict) -> list[dict]:
    bad = [k for k, v in own.items() if not torch.isfinite(v).all()]
    if bad:
        raise EdgeError(f"the model's own {', '.join(bad)} is not finite ({', '.join(str(own[k].tolist()) for k in bad)}); "
                        "set its budget again (edge.set_budget_ or edge.calibrate_budget_)")
    for level in levels:
        if not all(np.isfinite(np.asarray(level.get(k, 0.0), dtype=float)).all() for k in own):
            raise EdgeError(f"budget level {level.get('name')!r} has a knob that is not finite")
        bad = [k for k, v in own.items() if k not in level or np.shape(level[k]) != (v.numel(),)]  # (flat, row-major)
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
        **plan_entries(model),  # what the installed transforms say of themselves (a quantized model: its precision)
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
    installed = [TRANSFORMS.get(n) for n in parts(model).names()]
    lowered = [m for m in rt.modes if all(m in t.export_modes for t in installed)]  # the modes every transform takes
    mode = mode or (rt.mode if rt.mode in lowered else next(iter(lowered), rt.mode))
    if mode not in MODES:
        raise EdgeError(f"unknown export mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode not in rt.modes:
        raise EdgeError(f"{runtime} takes the {' and '.join(rt.modes)} mode{'s' * (len(rt.modes) > 1)} only, not {mode}; "
                        f"export with mode {rt.modes[0]!r} (--mode {rt.modes[0]})")
    not_yet = [t.name for t in installed if mode not in t.export_modes]
    if not_yet:
        takes = [m for m in MODES if all(m in t.export_modes for t in installed)]
        where = [r for r in RUNTIMES.names() if set(takes) & set(RUNTIMES.get(r).modes)]
        hint = (f"export it in the {' or '.join(lowered)} mode (--mode {lowered[0]})" if lowered else
                f"export it to {' or '.join(where)}" if where else "export the model before them")
        raise EdgeError(f"exporting a model with {', '.join(not_yet)} in the {mode} mode is not built yet; {hint}")
    precision = plan_entries(model).get("precision", "fp32")
    if precision not in precisions(runtime, mode):
        where = [f"{r} ({'/'.join(m for m in MODES if precision in precisions(r, m))} mode)"
                 for r in RUNTIMES.names() if precision in precisions(r)]
        raise EdgeError(f"the {runtime} lowering takes {', '.join(precisions(runtime, mode))} models in the {mode} mode, "
                        f"not {precision} ones (yet); export this model to {' or '.join(where) or 'no runtime yet'}, "
                        "or the fp32 model")
    say = print if progress else (lambda *a, **k: None)
    graph = GraphModel(exportable(model), rt.spare_rows)
    args = _inputs(graph, example)
    own = graph.knobs()
    levels = _check_levels(levels or [{"name": "exported", **{k: v.reshape(-1).tolist() for k, v in own.items()}}], own)
    arch = graph.arch
    n_tok = args[0].shape[1] if arch.seq_inputs else None
    max_tok = int(getattr(model.config, "max_position_embeddings", 512))
    if n_tok is not None and not 2 <= n_tok <= max_tok:
        raise EdgeError(f"the example input has {n_tok} tokens; this model takes 2..{max_tok}")
    t0 = time.time()
    say(f"edge export: tracing {type(model).__name__} ({len(graph.layers)} layers, {len(graph.heads)} exits, "
        f"{len(graph.routers)} routers, {len(graph.adaptive_index)} adaptive FFNs) for {runtime}, {mode} mode ...")
    try:
        with torch.no_grad():
            eps, section = _trace(graph, mode, args, own, max_tok)
    except Exception as e:  # torch.export's errors are pages long: one line, and the cause for a bug report
        raise EdgeError(f"torch.export could not trace this model ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:300]}); nothing was written") from e
    tolerance, near_tie = tolerances(model)
    cases = away_from_ties(graph, args, force_cases(graph), near_tie)
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
            "checks": checks, "tolerance": tolerance, "near_tie": near_tie,
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
