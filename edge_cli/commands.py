"""The `edge` command's verbs: each turns its flags into the library's configs, calls one public verb
of edge, export or profiler (loading its input and saving its output with edge.load_model and
edge.save where it makes a model), and prints. Choices come from the registries; validation is the
library's (configs raise EdgeError). User errors exit with code 2 (edge_cli.main)."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import edge
import export
import profiler

DEFAULT_OUT = "out/minilm-acm"
CALIB_LIMIT = 512  # calibration passages a budget knob is set on (--calib-limit)
TOKENS = 128  # the export example input's token count (edge export --tokens)
INT8 = "8da8w"  # the scheme edge demo measures beside fp32
DATA = "your own UTF-8 text file, one passage per line (default: Jane Austen's novels)"
LABELS = "the class of each line of --text, one per line (any word or name)"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as edge's one line (and exit 2) instead of a usage block."""

    def error(self, message: str):
        where = "" if self.prog == "edge" else f"{self.prog.removeprefix('edge ')}: "
        print(f"edge: error: {where}{message} (see {self.prog} --help)", file=edge.terminal())
        raise SystemExit(2)


def count(low: int = 1):
    """An argparse type: an integer >= low, for counts of passages (no silent "0 means all")."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def number(text: str) -> float:
    """An argparse type: a finite number (the library checks its range)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _check_output(path, overwrite: bool, kind: str = "directory") -> Path | None:
    """Fail before minutes of work, not after; None: no output asked for."""
    return None if path is None else edge.check_output(path, overwrite, kind)


# --- the model side: make a model adaptive, one step per verb ------------------------------------
def cmd_data(args) -> None:
    print(edge.fetch_austen(force=args.force))
    if args.fashion:
        print(edge.fetch_fashion_mnist(force=args.force))


def _summary(report: dict) -> str:
    lines = [f"held-out passages      {report['n']}",
             f"cosine to original     mean {report['cos_mean']:.4f}   p5 {report['cos_p5']:.4f}"]
    if "ffn_fraction" in report:  # (a model with ACMs)
        lines += [f"FFN compute            {report['ffn_fraction']:.3f} of the original FFN FLOPs",
                  f"model compute          {report['model_fraction']:.3f} of the original model FLOPs"]
    if "acc" in report:
        lines.append(f"novel accuracy (probe) {report['acc']:.4f}   original {report['acc_teacher']:.4f}")
    if report.get("knob"):  # the whole knob of this one model
        lines.append("knob (set with the knob alone):  budget  achieved  cosine mean  p5" +
                     ("      accuracy" if "acc" in report["knob"][0] else ""))
        lines += [f"{'':33}{r['budget']:>6.2f}  {r['achieved']:>8.3f}  {r['cos_mean']:>11.4f}  {r['cos_p5']:.4f}" +
                  (f"  {r['acc']:>8.4f}" if "acc" in r else "") for r in report["knob"]]
    return "\n".join(lines)


def cmd_acmize(args) -> dict:
    config = edge.AcmConfig(budget=args.budget, learners=args.learners, gate_hidden=args.gate_hidden, init=args.init,
                            exact_top=args.exact_top)
    return _convert(args, "acmize", edge.fit_acms, config, "phases 1-3", edge.ACM.phase1)


def cmd_moefy(args) -> dict:
    config = edge.MoeConfig(budget=args.budget, experts=args.experts, mode=args.mode, router_hidden=args.router_hidden,
                            expert_dropout=args.expert_dropout, balance=args.balance)
    return _convert(args, "moefy", edge.fit_moe, config, "phases 1-2", edge.MoE.phase1)


def _convert(args, verb: str, fit, config, phases: str, phase1: bool) -> dict:
    """`edge acmize` / `edge moefy`: convert on the text's train split, evaluate on its test split, save
    (phase1: whether the conversion has acmize's phase 1, DistillConfig.resolved)."""
    distill = edge.DistillConfig(repr_steps=getattr(args, "repr_steps", None), gate_steps=args.gate_steps,
                                 e2e_steps=args.e2e_steps, tune_backbone=args.tune_backbone, knob=args.knob,
                                 precision=args.precision).resolved(phase1)
    out = _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text)
    src = edge.load_model(args.model)
    if not args.quiet:
        steps = [distill.repr_steps] if verb == "acmize" else []
        steps += [distill.gate_steps, distill.e2e_steps]
        print(f"edge {verb}: training in {distill.precision} ({', '.join(map(str, steps[:-1]))} and {steps[-1]} steps "
              f"in {phases})", flush=True)
    t0 = time.time()
    model = fit(src.model, src.tokenizer, passages, config, distill, args.train_limit, args.calib_limit,
                progress=not args.quiet)
    seconds = time.time() - t0
    report = edge.evaluate_text(model, src.model, src.tokenizer, passages, args.eval_limit, args.calib_limit)
    report.update(convert_seconds=seconds, budget=args.budget)
    edge.save(model, out, tokenizer=src.tokenizer, overwrite=args.overwrite,
              extra={"base_model": src.base_model, "distill": distill.to_dict()})
    edge.write_json_atomic(out / "report.json", report)
    print(_summary(report))
    print(f"converted in {seconds:.0f} s; wrote {out}/ (model.safetensors, edge.json, report.json)")
    return report


def cmd_eval(args) -> dict:
    acm = edge.load_model(args.acm_dir, tokenizer=False)
    original = edge.load_original(acm.model, args.original or acm.base_model)
    report = edge.evaluate_text(acm.model, original.model, original.tokenizer, edge.read_passages(args.text), args.limit,
                                args.calib_limit)
    print(_summary(report))
    if args.json:
        print(json.dumps(report))
    return report


def _save(model, src, args, what: str, extra: dict | None = None) -> None:
    edge.save(model, args.output, tokenizer=src.tokenizer, overwrite=args.overwrite,
              extra={"base_model": src.base_model, **(extra or {})})
    print(f"wrote {args.output}/ ({what}; model.safetensors, edge.json)")


def cmd_add_head(args) -> None:
    _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text, args.labels)
    src = edge.load_model(args.model_dir)
    teacher = edge.load_original(src.model, args.original).model if args.original else None
    model = edge.fit_head(src.model, src.tokenizer, passages, teacher)
    _save(model, src, args, f"a task head to {len(passages.label_names)} classes: {', '.join(passages.label_names)}")


def cmd_add_exits(args) -> None:
    config = edge.ExitConfig(after=args.after, threshold=args.threshold, hidden=args.hidden, steps=args.steps,
                             lr=args.lr)
    _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text, args.labels)
    src = edge.load_model(args.model_dir)
    use_labels = False if args.distill else (True if args.labels else None)
    model = edge.fit_exits(src.model, src.tokenizer, passages, config, use_labels, progress=not args.quiet)
    _save(model, src, args, f"exits after layers {', '.join(map(str, config.after))}")


def cmd_add_skips(args) -> None:
    config = edge.SkipConfig(layers=args.layers, target=args.target, skip_rate=args.skip_rate,
                             threshold=args.threshold, capacity_weight=args.capacity_weight, samples=args.samples,
                             epochs=args.epochs, lr=args.lr)
    _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text)
    src = edge.load_model(args.model_dir)
    model = edge.fit_skips(src.model, src.tokenizer, passages, config, progress=not args.quiet)
    _save(model, src, args, f"{config.target} routers")


def cmd_prune(args) -> None:
    config = edge.PruneConfig(flops=args.flops, heads=not args.no_heads, neurons=not args.no_neurons,
                              kd_weight=args.kd_weight, sequences=args.sequences, multiple=args.multiple,
                              refit=not args.no_refit, refit_sequences=args.refit_sequences)
    _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text)
    src = edge.load_model(args.model_dir)
    t0 = time.time()
    model = edge.fit_prune(src.model, src.tokenizer, passages, config, progress=not args.quiet)
    done = edge.parts.parts(model).config("prune")
    heads = sum(map(len, done.kept_heads))
    print(f"pruned in {time.time() - t0:.0f} s: {heads} heads kept "
          f"({', '.join(str(len(k)) for k in done.kept_heads)} by layer), FFN widths {', '.join(map(str, done.ffn_widths))}")
    _save(model, src, args, f"pruned to {args.flops:g} of the FLOPs")


def cmd_train(args) -> dict:
    """`edge train TASK`: one of edge's from-scratch training jobs, plainly or through a V-cycle."""
    from edge.tasks import task
    from edge.vcycle import VCycleConfig, epochs_steps, train

    config = VCycleConfig(levels=args.levels, width=args.width, depth=args.depth, alpha=args.alpha,
                          steps=tuple(args.steps or ()), lr_scale=tuple(args.lr_scale or ()))
    job = task(args.task)
    out = _check_output(args.output, args.overwrite)
    run = train(job, config, total_steps=epochs_steps(job, args.epochs), seed=args.seed, state_dir=args.state,
                evaluate_every=args.every, progress=not args.quiet)
    report = {"task": job.name, "config": config.to_dict(), "epochs": args.epochs, "seed": args.seed,
              "train_seconds": run.seconds, job.metric: run.history[-1]["metric"], "history": run.history}
    with edge.files.atomic_dir(out, overwrite=args.overwrite) as tmp:
        job.save(run.model, tmp)
        (tmp / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"trained {job.name} in {run.seconds:.0f} s ({config.phases} phase{'s' * (config.phases > 1)}): "
          f"{job.metric} {report[job.metric]:.4f}; wrote {out}/ (model.safetensors, config.json, train.json)")
    return report


def cmd_set_budget(args) -> None:
    _check_output(args.output, args.overwrite)
    passages = edge.read_passages(args.text)
    src = edge.load_model(args.model_dir)
    original = edge.load_original(src.model, args.original or src.base_model)
    chosen = edge.fit_budget_(src.model, original.model, src.tokenizer, passages, args.budget, args.calib_limit,
                              progress=not args.quiet)["chosen"]
    acm = "" if chosen["acm_budget"] is None else f", ACM budget {chosen['acm_budget']:g}"
    print(f"budget {args.budget:g}: exit threshold {chosen['exit_threshold']:.4g}, router threshold "
          f"{chosen['skip_threshold']:.4g}{acm}: {chosen['flops_frac']:.3f} of the original FLOPs, quality "
          f"{chosen['quality']:.4f} (agreement with the original on calibration passages)")
    _save(src.model, src, args, f"set to budget {args.budget:g}", {"budget": {"budget": args.budget, **chosen}})


# --- the artifact side: export, measure, choose presets -------------------------------------------
def cmd_export(args) -> None:
    _check_output(args.output, args.overwrite)
    quant = _quant_config(args)
    src = edge.load_model(args.model_dir)
    if quant is not None:
        src.model = edge.quantize(src.model, quant)
    passages = edge.read_passages(args.text)
    example = export.example_input(src.model, src.tokenizer, passages, args.tokens)
    levels = None
    if args.budgets:
        original = edge.load_original(src.model, args.original or src.base_model)
        if not args.quiet:
            print(f"edge export: choosing the knobs of budget levels {', '.join(f'{b:g}' for b in args.budgets)} "
                  f"on {args.calib} calibration passages at most ...")
        levels = export.levels_from_text(src.model, original.model, src.tokenizer, passages, args.budgets, args.calib)
    export.to_runtime(src.model, args.to, args.output, example, overwrite=args.overwrite, progress=not args.quiet,
                      mode=args.mode, levels=levels, tokenizer=src.tokenizer)


def _precisions_help(runtimes) -> str:
    """Which runtime lowers which quantized precision, in which modes (from export.runtime.PRECISIONS)."""
    def one(name, rt):
        got = [x + ("" if all(x in export.precisions(name, m) for m in rt.modes) else
                    " in " + "/".join(m for m in rt.modes if x in export.precisions(name, m)) + " mode")
               for x in export.precisions(name) if x != "fp32"]
        return f"{name} ({', '.join(got) or 'none yet'})"

    return ", ".join(one(n, r) for n, r in runtimes.items())


def _quant_config(args):
    """export's --quantize, --group-size and --quantize-cover as a QuantConfig (None: fp32)."""
    if args.quantize is None:
        if args.group_size is not None or args.quantize_cover is not None:
            raise edge.EdgeError("--group-size and --quantize-cover go with --quantize SCHEME")
        return None
    default = edge.QuantConfig()
    return edge.QuantConfig(args.quantize, default.group_size if args.group_size is None else args.group_size,
                            default.cover if args.quantize_cover is None else tuple(args.quantize_cover))


def cmd_profile(args) -> int:
    config = profiler.ProfileConfig(runs=args.runs, warmup=args.warmup, branch_runs=args.branch_runs,
                                    threads=args.threads, budget_ms=args.budget_ms, percentile=args.percentile,
                                    ops=not args.no_ops, timeout_s=args.timeout, runner=args.runner)
    _check_output(args.output, args.overwrite)
    report = profiler.profile(args.artifact, args.target, config, progress=not args.quiet)
    print(json.dumps(report) if args.json else profiler.report_table(report), end="\n" if args.json else "")
    if args.output:
        profiler.write_report(report, args.output, args.overwrite)
        if not args.quiet:
            print(f"wrote {args.output}/ (report.json, report.txt, latency.png)")
    return 1 if report["budget"] and report["budget"]["pass"] is False else 0


def cmd_runner(args) -> None:
    print(profiler.build_runner(args.arch, args.output, args.overwrite))


def cmd_preset_choose(args) -> None:
    preset, points, out = profiler.choose_preset(
        args.artifact, args.target, args.budget_ms, edge.read_passages(args.text), args.texts, args.percentile,
        args.runs, args.threads, args.name, args.output, args.overwrite, progress=not args.quiet, runner=args.runner)
    for p in points:
        print(f"  {p['level']:<16} p{args.percentile:g} {p['latency_ms']:8.2f} ms   quality {p['quality']:.4f}"
              f"{'   Pareto' if p['pareto'] else ''}{'   <- chosen' if p['level'] == preset.level else ''}")
    print(f"wrote {out} (level {preset.level!r}: {preset.latency_ms:.2f} ms, {preset.quality_metric} "
          f"{preset.quality:.4f}) and {out.with_suffix('.png')}")


def cmd_preset_list(args) -> None:
    print(f"{'name':<36}{'target':<10}{'runtime':<20}{'budget':>10}{'latency':>10}{'quality':>9}  level")
    for p in profiler.list_presets(args.directory):
        print(f"{p.name[:35]:<36}{p.target[:9]:<10}{p.runtime[:19]:<20}{p.budget_ms:>8.1f}ms{p.latency_ms:>8.2f}ms"
              f"{p.quality:>9.4f}  {p.level}")


def cmd_preset_show(args) -> None:
    import yaml
    from dataclasses import asdict

    print(yaml.safe_dump(asdict(profiler.load_preset(args.preset_file)), sort_keys=False), end="")


def cmd_demo(args) -> int:
    """The whole path on the embedded MiniLM, as its commands: `edge acmize`, `edge export --to
    executorch` (the ACM routing kept, checked against eager on every branch) and `edge profile` with
    the native runner (the Python runner where it does not build here): at its own budget, and on
    every branch forced through its knobs; then the original, exported and measured the same way.
    Ends with the one figure: the converted model's p50 against the original's."""
    profiler.ProfileConfig(runs=args.runs)  # a bad --runs fails now, not after minutes of training
    args.model, args.text, args.init = None, None, "slices"
    args.overwrite = True  # the demo owns its default output directories; every write is an atomic swap
    model_dir = Path(args.output)
    artifact, measured = (model_dir.with_name(f"{model_dir.name}-{what}") for what in ("executorch", "profile"))
    original = model_dir.with_name("minilm-executorch")
    quiet = ["--quiet"] if args.quiet else []
    print(f"edge demo: ACMize all-MiniLM-L6-v2 at budget {args.budget} on Jane Austen and evaluate it on held-out "
          f"passages, export it to ExecuTorch ({artifact}) and measure it on this CPU ({measured})", file=edge.terminal())
    report = cmd_acmize(args)
    runner, why = profiler.host_runner()
    if why:
        print(f"edge demo: the native runner does not build here ({why}); measuring with the Python runner, "
              "which adds its own per-call cost to every method call", file=edge.terminal())
    _command(["export", model_dir, "--to", "executorch", "-o", artifact, "--overwrite", *quiet])
    rc = _command(["profile", artifact, "--runs", args.runs, "-o", measured, "--overwrite", "--runner", runner, *quiet])
    # the original, exported and measured the same way, for the one figure a user asks for
    _command(["export", "--to", "executorch", "-o", original, "--overwrite", *quiet])  # (no MODEL_DIR: MiniLM)
    # the int8 comparison a phone user makes: both models quantized (8da8w), exported and measured the same way
    int8 = {name: model_dir.with_name(f"{name}-int8-executorch") for name in (model_dir.name, "minilm")}
    _command(["export", model_dir, "--to", "executorch", "-o", int8[model_dir.name], "--quantize", INT8, "--overwrite", *quiet])
    _command(["export", "--to", "executorch", "-o", int8["minilm"], "--quantize", INT8, "--overwrite", *quiet])
    config = profiler.ProfileConfig(runs=args.runs, ops=False, branch_runs=0, runner=runner)
    p50 = lambda path: profiler.profile(path, "local", config, progress=not args.quiet)["levels"][0]["stats"]["p50"]  # noqa: E731
    base, own_int8, base_int8 = p50(original), p50(int8[model_dir.name]), p50(int8["minilm"])
    own_report = json.loads((measured / "report.json").read_text())
    own = own_report["levels"][0]["stats"]["p50"]
    how = "the native runner" if runner == "native" else "ExecuTorch's Python runtime"
    print(f"\nedge demo: on this CPU ({own_report['device'].get('cpu', '?')}; {how}, 1 thread, p50 of {args.runs} runs, "
          f"{TOKENS} tokens):\n  the ACMized MiniLM at budget {args.budget}: {own:.2f} ms at {report['model_fraction']:.3f} "
          f"of the original's FLOPs\n  the original, exported the same way ({original}): {base:.2f} ms\n"
          f"  time ratio {own / base:.2f}x\n"
          f"  both in int8 ({INT8}: edge export --quantize {INT8}): the ACMized MiniLM {own_int8:.2f} ms, the original "
          f"{base_int8:.2f} ms: time ratio {own_int8 / base_int8:.2f}x\n"
          f"  the ACMized MiniLM in int8 against the fp32 original: {own_int8 / base:.2f}x")
    return rc


def _command(argv: list) -> int | None:
    """Another subcommand, as its command line would run it (its own defaults, one place)."""
    args = parser().parse_args([str(a) for a in argv])
    return args.fn(args)


# --- the parser ------------------------------------------------------------------------------------
def _add_acmize_args(p, output_default=None):
    precisions = edge.PRECISIONS
    _add_convert_args(p, output_default)
    p.add_argument("--learners", type=int, default=edge.AcmConfig.learners, help="learners per ACM (N >= 1)")
    p.add_argument("--gate-hidden", type=int, default=edge.AcmConfig.gate_hidden,
                   help=f"hidden width of each ACM's gate (default {edge.AcmConfig.gate_hidden}; its FLOPs count in "
                        "the budget)")
    p.add_argument("--repr-steps", type=int, default=edge.DistillConfig.repr_steps,
                   help="phase 1 steps (batches of 32; default: the precision's, "
                   + ", ".join(f"{c.repr_steps} at {n}" for n, c in precisions.items()) + ")")
    p.add_argument("--exact-top", action=argparse.BooleanOptionalAction, default=edge.AcmConfig.exact_top,
                   help="budget 1.0 runs each original FFN itself, so the top of the knob is the original model "
                        "(default; the FFN's weights are kept besides the learners': 1.75x the FFN parameters at 4 "
                        "learners); --no-exact-top: it runs every learner, whose sum training moves")


def _add_moefy_args(p):
    _add_convert_args(p, None, gate="phase 1 steps: the routers learn each expert's share of the FFN output")
    p.add_argument("--experts", type=int, default=edge.MoeConfig.experts,
                   help=f"experts per FFN (default {edge.MoeConfig.experts}; the FFN's width must divide by it)")
    p.add_argument("--mode", choices=edge.moe.MODES, default=edge.MoeConfig.mode,
                   help="adaptive: a token runs the experts whose gate is open (a per-token count, the budget knob "
                        "its bias); topk: every token runs its K best experts (K from the budget)")
    p.add_argument("--router-hidden", type=int, default=edge.MoeConfig.router_hidden,
                   help=f"hidden width of each router (default {edge.MoeConfig.router_hidden}; 0: one linear layer; "
                        "its FLOPs count in the budget)")
    p.add_argument("--expert-dropout", type=number, default=edge.MoeConfig.expert_dropout,
                   help=f"in training, each open expert closed with this probability (default "
                        f"{edge.MoeConfig.expert_dropout})")
    p.add_argument("--balance", type=number, default=edge.MoeConfig.balance,
                   help=f"weight of the entropy regularizer that keeps every expert used (default "
                        f"{edge.MoeConfig.balance})")


def _add_convert_args(p, output_default=None, gate="phase 2 steps"):
    """What `edge acmize` and `edge moefy` share: output, budget, the data's limits, training steps."""
    precisions = edge.PRECISIONS
    p.add_argument("-o", "--output", required=output_default is None, default=output_default,
                   help="output directory (written atomically)")
    p.add_argument("--budget", type=number, default=0.5, help="target FFN compute fraction in (0, 1]")
    p.add_argument("--train-limit", type=count(1), default=None, help="use only the first N training passages")
    p.add_argument("--eval-limit", type=count(1), default=None, help="evaluate on the first N held-out passages")
    p.add_argument("--calib-limit", type=count(1), default=CALIB_LIMIT,
                   help=f"set the budget knob on the first N calibration passages (default {CALIB_LIMIT})")
    p.add_argument("--gate-steps", type=int, default=edge.DistillConfig.gate_steps, help=gate)
    p.add_argument("--e2e-steps", type=int, default=edge.DistillConfig.e2e_steps,
                   help="end-to-end steps (the last phase; default: the precision's, "
                   + ", ".join(f"{c.e2e_steps} at {n}" for n, c in precisions.items()) + "; moefy, which has no "
                   "learners to train first: " + ", ".join(f"{c.e2e_alone_steps} at {n}" for n, c in precisions.items()) + ")")
    p.add_argument("--precision", choices=["auto", *precisions.names()], default=edge.DistillConfig.precision,
                   help="of the training passes' matrix products (auto: bf16 where this CPU has it natively)")
    p.add_argument("--knob", type=number, nargs="*", default=list(edge.DistillConfig.knob), metavar="B",
                   help="the budgets in (0, 1] one conversion serves: the end-to-end phase trains at each of them and "
                        f"--budget (default {' '.join(map(str, edge.DistillConfig.knob))}; none: --budget alone)")
    backbone = p.add_mutually_exclusive_group()
    backbone.add_argument("--tune-backbone", dest="tune_backbone", action="store_true",
                          default=edge.DistillConfig.tune_backbone,
                          help="the end-to-end phase also fine-tunes attention and norms (better at the lowest "
                               "budgets; the top of the knob is then not the original model)")
    backbone.add_argument("--freeze-backbone", dest="tune_backbone", action="store_false",
                          help="the end-to-end phase trains only the adaptive FFNs (the default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_step_args(p, what: str):
    """MODEL_DIR -o OUT --overwrite: the verbs that make a model from a model."""
    p.add_argument("model_dir", help=f"the model to {what}: a directory written by edge.save (with its tokenizer) or a "
                                     "local Hugging Face model directory")
    p.add_argument("-o", "--output", required=True, help="output model directory (written atomically by edge.save)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def _add_measure_args(p, runs: int, budget: str, budget_required: bool = False) -> None:
    targets = profiler.TARGETS
    p.add_argument("--target", default="local",
                   help="where to measure: " + "; ".join(targets.get(n).USAGE for n in targets.names()))
    p.add_argument("--runner", choices=profiler.RUNNERS, default="python",
                   help="the measuring program: python (the runtime's Python API, edge installed on the target), "
                        "native (the C++ runner for ExecuTorch artifacts, built here and pushed) or app "
                        "(android_demo's headless benchmark, adb target)")
    p.add_argument("--budget-ms", type=number, required=budget_required, help=budget)
    p.add_argument("--percentile", type=number, default=90.0, help="the percentile the budget applies to (default 90)")
    p.add_argument("--runs", type=int, default=runs, help=f"timed runs per budget level (default {runs})")
    p.add_argument("--threads", type=int, default=1, help="the runtime's CPU threads (default 1)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="edge", description="Make pretrained transformers adaptive for edge devices.")
    sub = ap.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show other libraries' warnings and messages (by default they go to a log file "
                             "under $EDGE_DATA/logs that an error names)")

    def verb(subparsers, name: str, fn, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=help, parents=[common])  # (every verb takes --verbose)
        p.set_defaults(fn=fn)
        return p

    p = verb(sub, "data", cmd_data, "fetch the real data (Jane Austen text; with --fashion, Fashion-MNIST) from Debian "
                                    "into the cache")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--fashion", action="store_true", help="also fetch Fashion-MNIST (Debian dataset-fashion-mnist)")

    p = verb(sub, "acmize", cmd_acmize, "convert a model's FFNs into ACMs by distillation")
    p.add_argument("model", nargs="?", default=None,
                   help="local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--init", choices=edge.INITS, default=edge.AcmConfig.init, help="learner initialization")
    p.add_argument("--text", help=DATA)
    _add_acmize_args(p)

    p = verb(sub, "moefy", cmd_moefy, "convert a model's FFNs into sigma-MoE layers (experts of its own neurons, "
                                      "sigmoid routers) by distillation")
    p.add_argument("model", nargs="?", default=None,
                   help="local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--text", help=DATA)
    _add_moefy_args(p)

    p = verb(sub, "eval", cmd_eval, "evaluate an ACMized model against its original on held-out text")
    p.add_argument("acm_dir", help="directory written by `edge acmize`")
    p.add_argument("--original", help="original model directory (default: the one it was converted from)")
    p.add_argument("--text", help=DATA)
    p.add_argument("--limit", type=count(1), default=None, help="evaluate on the first N held-out passages")
    p.add_argument("--calib-limit", type=count(1), default=CALIB_LIMIT,
                   help=f"set the knob curve's budgets on the first N calibration passages (default {CALIB_LIMIT}, "
                        "as `edge acmize`)")
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")

    p = verb(sub, "add-head", cmd_add_head, "put a task head on an embedding model: a linear probe fitted on labelled "
                                            "passages (which novel a passage is from, by default); the model becomes a "
                                            "classifier")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="an embedding model: a directory written by edge.save or a local Hugging Face model directory "
                        "(default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("-o", "--output", required=True, help="output model directory (written atomically by edge.save)")
    p.add_argument("--text", help="your own UTF-8 text file, one passage per line, with --labels (default: Jane Austen's "
                                  "novels, labelled with their novel)")
    p.add_argument("--labels", help=LABELS)
    p.add_argument("--original", help="fit the probe on this model's embeddings instead (e.g. the model an ACM model was "
                                      "converted from, as bench/depth.py does)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    c = edge.ExitConfig
    p = verb(sub, "add-exits", cmd_add_exits, "put early-exit heads after some layers and train them (only them); a "
                                              "classifier's exits learn the labels")
    _add_model_step_args(p, "add exits to")
    p.add_argument("--after", type=int, nargs="+", default=list(c.after),
                   help=f"exit after these layers, 1..L-1 (default {' '.join(map(str, c.after))})")
    p.add_argument("--threshold", type=number, default=c.threshold,
                   help=f"leave at the first exit this confident, in [0, 1] (default {c.threshold:g}: nobody leaves; "
                        "edge set-budget chooses it)")
    p.add_argument("--hidden", type=int, default=c.hidden,
                   help=f"width of an embedding model's confidence head (default {c.hidden})")
    p.add_argument("--steps", type=int, default=c.steps, help=f"training steps of the heads (default {c.steps})")
    p.add_argument("--lr", type=number, default=c.lr, help=f"their learning rate (default {c.lr:g})")
    p.add_argument("--text", help=DATA)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--labels", help=LABELS + "; a classifier's exits learn them (Austen's passages have theirs)")
    how.add_argument("--distill", action="store_true",
                     help="a classifier's exits learn its final output instead of the labels")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    c = edge.SkipConfig
    p = verb(sub, "add-skips", cmd_add_skips, "put a MindSkip router before layers and router-tune them (only them) to "
                                              "skip attention (or whole blocks) per input")
    _add_model_step_args(p, "add routers to")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="routers on these layers, 1..L (default: all)")
    p.add_argument("--target", choices=edge.SKIP_TARGETS, default=c.target,
                   help=f"what a router skips (default {c.target})")
    p.add_argument("--skip-rate", type=number, default=c.skip_rate,
                   help=f"the share of skips router-tuning aims at, in [0, 1] (default {c.skip_rate:g})")
    p.add_argument("--threshold", type=number, default=c.threshold,
                   help=f"run the {c.target} when the router's score is at least this, in [0, 1] (default "
                        f"{c.threshold:g}; edge set-budget chooses it)")
    p.add_argument("--capacity-weight", type=number, default=c.capacity_weight,
                   help=f"weight of the loss term pulling the skips to --skip-rate (default {c.capacity_weight:g})")
    p.add_argument("--samples", type=int, default=c.samples,
                   help=f"training passages router-tuning reads per epoch (default {c.samples})")
    p.add_argument("--epochs", type=int, default=c.epochs, help=f"(default {c.epochs})")
    p.add_argument("--lr", type=number, default=c.lr, help=f"the routers' learning rate (default {c.lr:g})")
    p.add_argument("--text", help=DATA)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    c = edge.PruneConfig
    p = verb(sub, "prune", cmd_prune, "one-shot structured pruning (OPTIN): score every attention head and FFN neuron "
                                      "on calibration passages, remove the least important until the model costs "
                                      "--flops of its FLOPs; a smaller dense model, no retraining")
    _add_model_step_args(p, "prune")
    p.add_argument("--flops", type=number, default=c.flops,
                   help=f"the fraction of the model's FLOPs to keep, in (0, 1] (default {c.flops:g})")
    p.add_argument("--no-heads", action="store_true", help="keep every attention head (prune FFN neurons only)")
    p.add_argument("--no-neurons", action="store_true", help="keep every FFN neuron (prune heads only)")
    p.add_argument("--sequences", type=int, default=c.sequences,
                   help=f"calibration passages the units are scored on (default {c.sequences})")
    p.add_argument("--multiple", type=int, default=c.multiple,
                   help=f"FFN widths are kept in multiples of this (default {c.multiple})")
    p.add_argument("--kd-weight", type=number, default=c.kd_weight,
                   help=f"weight of the output's damage beside the layers' in a unit's score (default {c.kd_weight:g})")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the kept units' weights as they are (OPTIN as published; the refit re-solves the output "
                        "projections by least squares)")
    p.add_argument("--refit-sequences", type=int, default=c.refit_sequences,
                   help=f"calibration passages the refit solves on (default {c.refit_sequences})")
    p.add_argument("--text", help=DATA)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from edge.tasks import task_names
    from edge.vcycle import VCycleConfig

    c = VCycleConfig
    p = verb(sub, "train", cmd_train, "train one of edge's models from scratch (the Fashion-MNIST ViT, a small BERT "
                                      "masked-language model on Austen), through a multi-level V-cycle by default "
                                      "(--levels 1: plain training)")
    p.add_argument("task", choices=task_names())
    p.add_argument("--output", "-o", required=True, help="the directory to write the trained model to")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output directory")
    p.add_argument("--epochs", type=number, default=5.0, help="epochs' worth of steps in all phases together (default 5)")
    p.add_argument("--levels", type=int, default=c.levels, help=f"levels of the V-cycle; 1 = plain training (default {c.levels})")
    p.add_argument("--width", type=int, default=c.width, help=f"width factor of each coalescing (default {c.width})")
    p.add_argument("--depth", type=int, default=c.depth, help=f"depth factor of each coalescing (default {c.depth})")
    p.add_argument("--alpha", type=number, default=c.alpha, help=f"interpolation weight (default {c.alpha:g})")
    p.add_argument("--steps", type=number, nargs="+", help="each phase's share of the steps (2 levels - 1 numbers)")
    p.add_argument("--lr-scale", type=number, nargs="+", help="each level's learning rate as a multiple of the task's")
    p.add_argument("--state", help="a directory for each finished phase; a run with the same settings resumes from it")
    p.add_argument("--every", type=count(0), default=0, help="evaluate every N steps of the last phase (default: at the end)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = verb(sub, "set-budget", cmd_set_budget, "the one budget knob: choose the exit threshold, router threshold and "
                                                "ACM budget that keep the most of the original within a FLOP budget, "
                                                "on calibration passages")
    _add_model_step_args(p, "set")
    p.add_argument("--budget", type=number, required=True, help="FLOPs to spend, as a fraction of the original's, in (0, 1]")
    p.add_argument("--original", help="the model quality is measured against (default: the one it was made from)")
    p.add_argument("--text", help=DATA)
    p.add_argument("--calib-limit", type=count(1), default=CALIB_LIMIT,
                   help=f"choose on the first N calibration passages (default {CALIB_LIMIT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    runtimes = export.RUNTIMES
    p = verb(sub, "export", cmd_export, "export an adaptive model to a runtime, keeping its exits, skips and ACM routing")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="directory written by edge.save / `edge acmize`, or a Hugging Face one (default: the embedded "
                        "all-MiniLM-L6-v2)")
    p.add_argument("--to", required=True, choices=runtimes.names(),
                   help="target runtime (" + ", ".join(f"{n}: the {r.package} package" for n, r in runtimes.items()) + ")")
    p.add_argument("--mode", choices=export.MODES, default=None,
                   help="graph: the control flow inside one program (cond/If, gathers); routed: plain segments between "
                        "the gates, run by the plan's driver (default: the faster one for the runtime, measured: "
                        + ", ".join(f"{r.mode}{' only' if len(r.modes) == 1 else ''} for {n}" for n, r in runtimes.items())
                        + ")")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (atomically)")
    p.add_argument("--tokens", type=count(2), default=TOKENS,
                   help="token count of the example input (the graph takes 2..max)")
    p.add_argument("--text", help="your own UTF-8 text file for the example input (default: Jane Austen)")
    p.add_argument("--budgets", type=number, nargs="+",
                   help="budget levels to record in the plan, as fractions of the original FLOPs (e.g. 1 0.75 0.5); "
                        "each gets the knobs edge.set_budget_ picks on calibration passages")
    p.add_argument("--original", help="for --budgets: the model quality is measured against (default: the one it was "
                                      "made from)")
    p.add_argument("--calib", type=count(1), default=128, help="calibration passages for --budgets (default 128)")
    from edge.quant import COVER, SCHEMES, QuantConfig

    p.add_argument("--quantize", choices=list(SCHEMES),
                   help="quantize the model first (edge.quant): 8da8w int8 weights per channel, 8da4w int4 weights per "
                        "group; activations int8 per token, chosen at run time; runtimes: " + _precisions_help(runtimes))
    p.add_argument("--group-size", type=count(2), default=None,
                   help=f"8da4w: inputs per weight scale (default {QuantConfig.group_size}); a layer it does not divide "
                        "gets 8da8w")
    p.add_argument("--quantize-cover", nargs="+", choices=COVER, default=None,
                   help=f"what to quantize (default: {' '.join(QuantConfig.cover)}; gates, exits and skips take decisions "
                        "and stay fp32 unless named)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    c = profiler.ProfileConfig
    p = verb(sub, "profile", cmd_profile, "measure an exported artifact on a target, per budget level and branch, "
                                          "against a latency budget (exit 1 on FAIL)")
    p.add_argument("artifact", help="directory written by `edge export`")
    _add_measure_args(p, runs=c.runs, budget="latency budget in ms; PASS/FAIL is for the first budget level")
    p.add_argument("--warmup", type=int, default=c.warmup, help=f"untimed runs first (default {c.warmup})")
    p.add_argument("--branch-runs", type=int, default=c.branch_runs,
                   help=f"timed runs per branch-forcing case (default {c.branch_runs}; 0: checked only)")
    p.add_argument("--no-ops", action="store_true", help="skip the per-operator profile")
    p.add_argument("--timeout", type=number, default=c.timeout_s, help="seconds before the measurement is stopped")
    p.add_argument("-o", "--output", help="write report.json, report.txt and latency.png into this directory")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = verb(sub, "runner", cmd_runner, "build the native runner (C++ on ExecuTorch's Module API) for this machine or "
                                        "cross-compiled for an ARM Linux board")
    p.add_argument("--arch", choices=list(profiler.RUNNER_PLATFORMS), help="default: this machine's")
    p.add_argument("-o", "--output", help="directory for the binary and its libraries (default build/runner-ARCH)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    p = verb(sub, "preset", None, "choose a budget preset from measurements; list or show presets")
    presets = p.add_subparsers(dest="action", required=True)
    p = verb(presets, "choose", cmd_preset_choose, "measure every budget level of an artifact and keep the most "
                                                   "accurate one within a latency budget, as a preset file")
    p.add_argument("artifact", help="directory written by `edge export`")
    _add_measure_args(p, runs=30, budget="the latency budget the preset must meet", budget_required=True)
    p.add_argument("--texts", type=count(1), default=64, help="held-out passages to measure quality on (default 64)")
    p.add_argument("--text", help="your own UTF-8 text file for the held-out passages (default: Jane Austen)")
    p.add_argument("--name", help="the preset's name (default: model-runtime-target-budget)")
    p.add_argument("-o", "--output", help="preset file to write (default profiles/NAME.yaml; a .png of the front beside it)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p = verb(presets, "list", cmd_preset_list, "the presets in a directory")
    p.add_argument("directory", nargs="?", default="profiles", help="default profiles/")
    p = verb(presets, "show", cmd_preset_show, "one preset file, as YAML")
    p.add_argument("preset_file", metavar="PRESET_FILE", help="a preset file (e.g. profiles/NAME.yaml)")

    p = verb(sub, "demo", cmd_demo, "the main job: ACMize the embedded MiniLM, report what it keeps, export it to "
                                    "ExecuTorch and measure it on this CPU")
    _add_acmize_args(p, output_default=DEFAULT_OUT)
    p.add_argument("--runs", type=int, default=30, help="timed runs per budget level of the measurement (default 30)")
    return ap


def run(argv: list[str] | None = None) -> int:
    """Parse, run the verb, and turn what it raised into edge's exit codes (see edge_cli.main)."""
    args = parser().parse_args(argv)
    with edge.quiet_console(getattr(args, "verbose", False)) as log:
        try:
            rc = args.fn(args)
        except edge.EdgeError as e:
            print(f"edge: error: {' '.join(str(e).split())}", file=edge.terminal())
            return 2
        except KeyboardInterrupt:
            print("edge: interrupted; nothing was written", file=edge.terminal())
            return 130
        except Exception as e:  # a bug, not the user's: one line, and the traceback where the log is
            import traceback

            traceback.print_exc()  # (to sys.stderr: the log, or the terminal with --verbose)
            where = "above" if log is None else f"in {log}"
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"edge: error: internal error ({type(e).__name__}: {first}); the traceback is {where}; "
                  "please report it", file=edge.terminal())
            return 1
        if edge.interrupted():  # (a Ctrl-C that a library swallowed: every write since was refused)
            print("edge: interrupted; nothing was written", file=edge.terminal())
            return 130
    return rc if isinstance(rc, int) else 0  # (a command may return its report)
