"""The `edge` command: a thin layer, one subcommand per public verb. User errors exit with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.acm import AcmConfig
from edge.convert import PRECISIONS, DistillConfig
from edge.console import terminal
from edge.errors import EdgeError

DEFAULT_OUT = "out/minilm-acm"
CALIB_LIMIT = 512  # calibration passages the budget knob is set on (edge acmize --calib-limit)
TOKENS = 128  # the export example input's token count (edge export --tokens)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as edge's one line (and exit 2) instead of a usage block."""

    def error(self, message: str):
        where = "" if self.prog == "edge" else f"{self.prog.removeprefix('edge ')}: "
        print(f"edge: error: {where}{message} (see {self.prog} --help)", file=terminal())
        raise SystemExit(2)


def count(low: int = 1):
    """An argparse type: an integer >= low (no silent "0 means all")."""
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
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _check_output(path, overwrite: bool, kind: str = "directory") -> Path | None:
    """Fail before minutes of work, not after (edge.files.check_output); None: no output asked for."""
    from edge.files import check_output

    return None if path is None else check_output(path, overwrite, kind)


def _passages(text: str | None):
    from edge.data import austen_passages, text_file_passages

    return text_file_passages(text) if text else austen_passages()


def _summary(report: dict) -> str:
    lines = [f"held-out passages      {report['n']}",
             f"cosine to original     mean {report['cos_mean']:.4f}   p5 {report['cos_p5']:.4f}",
             f"FFN compute            {report['ffn_fraction']:.3f} of the original FFN FLOPs",
             f"model compute          {report['model_fraction']:.3f} of the original model FLOPs"]
    if "acc" in report:
        lines.append(f"novel accuracy (probe) {report['acc']:.4f}   original {report['acc_teacher']:.4f}")
    return "\n".join(lines)


def _public(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "probe"}


def cmd_data(args) -> None:
    from edge.data import fetch_austen, fetch_fashion_mnist

    print(fetch_austen(force=args.force))
    if args.fashion:
        print(fetch_fashion_mnist(force=args.force))


def cmd_acmize(args) -> dict:
    import edge
    from edge.data import batches
    from edge.evaluate import evaluate
    from edge.files import atomic_dir, write_json_atomic

    config = AcmConfig(budget=args.budget, learners=args.learners, gate_hidden=args.gate_hidden, init=args.init)
    distill = DistillConfig(repr_steps=args.repr_steps, gate_steps=args.gate_steps, e2e_steps=args.e2e_steps,
                            tune_backbone=not args.freeze_backbone, precision=args.precision).resolved()
    out = _check_output(args.output, args.overwrite)
    passages = _passages(args.text)
    model, tok = edge.load_pretrained(args.model)
    train = passages.split("train")
    if args.train_limit:
        train = train.head(args.train_limit)
    if not args.quiet:
        print(f"edge acmize: training in {distill.precision} ({distill.repr_steps}, {distill.gate_steps} and "
              f"{distill.e2e_steps} steps in phases 1-3)", flush=True)
    t0 = time.time()
    calib = batches(tok, passages.split("calib").texts[:args.calib_limit], 64)
    acm = edge.acmize(model, config, batches(tok, train.texts, 32), calib, distill, progress=not args.quiet)
    seconds = time.time() - t0
    report = _public(evaluate(acm, model, tok, passages, limit=args.eval_limit))
    report.update(convert_seconds=seconds, budget=args.budget)
    edge.save(acm, out, tokenizer=tok, overwrite=args.overwrite,
              extra={"base_model": str(args.model or "all-MiniLM-L6-v2"), "distill": distill.to_dict()})
    write_json_atomic(out / "report.json", report)
    print(_summary(report))
    print(f"converted in {seconds:.0f} s; wrote {out}/ (model.safetensors, edge.json, report.json)")
    return report


def cmd_eval(args) -> dict:
    import edge
    from edge.evaluate import evaluate
    from edge.io import read_meta

    meta = read_meta(args.acm_dir)
    acm = edge.load(args.acm_dir)
    original = args.original or meta.get("base_model")
    model, tok = edge.load_pretrained(original)
    differ = [k for k in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
              if getattr(model.config, k, None) != getattr(acm.config, k, None)]
    if differ:
        raise EdgeError(f"{original or 'the original'} is not the model {args.acm_dir} was converted from ("
                        + ", ".join(f"{k} {getattr(model.config, k, None)} vs {getattr(acm.config, k, None)}" for k in differ)
                        + "); pass the original with --original")
    report = _public(evaluate(acm, model, tok, _passages(args.text), limit=args.limit))
    print(_summary(report))
    if args.json:
        print(json.dumps(report))
    return report


def cmd_profile(args) -> int:
    import profiler
    from profiler import report as files

    config = profiler.ProfileConfig(runs=args.runs, warmup=args.warmup, threads=args.threads, budget_ms=args.budget_ms,
                                    percentile=args.percentile, ops=not args.no_ops, timeout_s=args.timeout,
                                    runner=args.runner)
    _check_output(args.output, args.overwrite)
    report = profiler.profile(args.artifact, args.target, config, progress=not args.quiet)
    print(json.dumps(report) if args.json else files.table(report), end="\n" if args.json else "")
    if args.output:
        files.write(report, args.output, args.overwrite)
        if not args.quiet:
            print(f"wrote {args.output}/ (report.json, report.txt, latency.png)")
    return 1 if report["budget"] and report["budget"]["pass"] is False else 0


def cmd_runner(args) -> int:
    from profiler import native

    out = _check_output(args.output or Path("build") / f"runner-{args.arch or native.host_arch()}", args.overwrite)
    print(native.build(args.arch, out))
    return 0


def _preset_inputs(artifact, text: str | None, n: int) -> list:
    """Held-out passages (the test split) tokenized with the artifact's own tokenizer, one input each."""
    from device.artifact import TOKENIZER

    if "tokenizer" not in artifact.plan:
        raise EdgeError(f"{artifact.path} has no tokenizer to read text with; export it with `edge export`")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(artifact.path / TOKENIZER))
    tokens = artifact.inputs()[0].shape[1]
    names = [s["name"] for s in artifact.plan["inputs"]]
    out = []
    for t in _passages(text).split("test").texts[:n]:
        enc = tok([t], truncation=True, max_length=tokens, return_tensors="np")
        out.append([enc[k].astype("int64") for k in names])
    return out


def cmd_preset(args) -> int | None:
    from profiler import presets

    if args.action == "choose":
        from device.artifact import load_artifact

        if args.budget_ms is None:
            raise EdgeError("`edge preset choose` needs --budget-ms")
        if args.path is None:
            raise EdgeError("`edge preset choose` needs the artifact directory")
        a = load_artifact(args.path)
        name = args.name or presets.default_name(a.plan, args.target, args.budget_ms)
        out = Path(args.output) if args.output else presets.preset_file(name)  # (a plain name: inside profiles/)
        _check_output(out, args.overwrite, "file")
        _check_output(out.with_suffix(".png"), args.overwrite, "file")  # (the front's plot, beside it)
        preset, points = presets.choose(a, args.target, args.budget_ms, _preset_inputs(a, args.text, args.texts),
                                        args.percentile, args.runs, args.threads, name, progress=not args.quiet,
                                        runner=args.runner)
        for p in points:
            print(f"  {p['level']:<16} p{args.percentile:g} {p['latency_ms']:8.2f} ms   quality {p['quality']:.4f}"
                  f"{'   Pareto' if p['pareto'] else ''}{'   <- chosen' if p['level'] == preset.level else ''}")
        presets.save_preset(preset, out)
        presets.plot_front(points, preset, out.with_suffix(".png"))
        print(f"wrote {out} (level {preset.level!r}: {preset.latency_ms:.2f} ms, {preset.quality_metric} "
              f"{preset.quality:.4f}) and {out.with_suffix('.png')}")
    elif args.action == "list":
        root = Path(args.path or "profiles")
        files = sorted(root.glob("*.yaml")) if root.is_dir() else []
        if not files:
            raise EdgeError(f"no presets in {root}; make one with `edge preset choose`")
        print(f"{'name':<36}{'target':<10}{'runtime':<20}{'budget':>10}{'latency':>10}{'quality':>9}  level")
        for f in files:
            p = presets.load_preset(f)
            print(f"{p.name[:35]:<36}{p.target[:9]:<10}{p.runtime[:19]:<20}{p.budget_ms:>8.1f}ms{p.latency_ms:>8.2f}ms"
                  f"{p.quality:>9.4f}  {p.level}")
    else:
        import yaml

        if not args.path:
            raise EdgeError("`edge preset show` needs a preset file")
        print(yaml.safe_dump(presets.load_preset(args.path).to_dict(), sort_keys=False), end="")
    return None


def _example(tok, passages, tokens: int) -> dict:
    """The export's example input: the first held-out passage, padded to `tokens`."""
    return dict(tok([passages.split("test").texts[0]], padding="max_length", truncation=True, max_length=tokens,
                    return_tensors="pt"))


def cmd_export(args) -> None:
    import edge
    import export

    _check_output(args.output, args.overwrite)
    model = edge.load(args.model_dir)
    arch = edge.arch_for(model)
    if "input_ids" not in arch.inputs:
        raise EdgeError(f"`edge export` builds its example input from text; for a {arch.name} model call "
                        "export.to_runtime(model, runtime, out, example) from Python")
    from transformers import AutoTokenizer

    tok = None
    if (Path(args.model_dir) / "tokenizer_config.json").is_file():  # (transformers makes up an empty one)
        try:
            tok = AutoTokenizer.from_pretrained(args.model_dir)
        except Exception:
            pass
    if tok is None or len(tok) > model.config.vocab_size:
        raise EdgeError(f"{args.model_dir} has no tokenizer that matches the model; save the model with "
                        "edge.save(..., tokenizer=tok)")
    from edge.pretrained import token_positions

    most = token_positions(model.config)
    if most is not None and args.tokens > most:
        raise EdgeError(f"--tokens {args.tokens} is more than this model takes ({most} token positions)")
    passages = _passages(args.text)
    example = _example(tok, passages, args.tokens)
    levels = None
    if args.budgets:
        from edge.io import read_meta

        original, _ = edge.load_pretrained(read_meta(args.model_dir).get("base_model"))
        calib = edge.batches(tok, passages.split("calib").texts[:args.calib], 32)
        if not args.quiet:
            print(f"edge export: choosing the knobs of budget levels {', '.join(f'{b:g}' for b in args.budgets)} "
                  f"on {min(args.calib, len(passages.split('calib').texts))} calibration passages ...")
        levels = export.budget_levels(model, original, calib, tuple(args.budgets))
    export.to_runtime(model, args.to, args.output, example, overwrite=args.overwrite, progress=not args.quiet,
                      mode=args.mode, levels=levels, tokenizer=tok)


def _demo_runner(quiet: bool) -> str:
    """The demo measures with the native runner (what a board or a phone runs) where it builds here,
    else with the Python runner, saying so."""
    from profiler import native

    try:
        native.ensure()
        return "native"
    except EdgeError as e:
        print(f"edge demo: the native runner does not build here ({e}); measuring with the Python runner, "
              "which adds its own per-call cost to every method call", file=terminal())
        return "python"


def cmd_demo(args) -> int:
    """The whole path on the embedded MiniLM: ACMize it, export it to ExecuTorch with its ACM routing
    kept (checked against eager on every branch) and measure the artifact on this CPU with the native
    runner: at its own budget, and on every branch forced through its knobs (every learner, none, ...);
    then the original, exported and measured the same way, beside it. Ends with the one figure: the
    converted model's p50 against the original's."""
    import profiler

    profiler.ProfileConfig(runs=args.runs)  # a bad --runs fails now, not after minutes of training
    args.model, args.text, args.init = None, None, "slices"
    args.overwrite = True  # the demo owns its default output directories; every write is an atomic swap
    model_dir = Path(args.output)
    artifact, measured = (model_dir.with_name(f"{model_dir.name}-{what}") for what in ("executorch", "profile"))
    original = model_dir.with_name("minilm-executorch")
    quiet = ["--quiet"] if args.quiet else []
    print(f"edge demo: ACMize all-MiniLM-L6-v2 at budget {args.budget} on Jane Austen and evaluate it on held-out "
          f"passages, export it to ExecuTorch ({artifact}) and measure it on this CPU ({measured})", file=terminal())
    report = cmd_acmize(args)
    runner = _demo_runner(args.quiet)
    _command(["export", str(model_dir), "--to", "executorch", "-o", str(artifact), "--overwrite", *quiet])
    rc = _command(["profile", str(artifact), "--runs", str(args.runs), "-o", str(measured), "--overwrite",
                   "--runner", runner, *quiet])
    # the original, exported and measured the same way, for the one figure a user asks for
    import edge
    import export

    model, tok = edge.load_pretrained()
    dense = export.to_executorch(model, original, _example(tok, _passages(None), TOKENS), overwrite=True,
                                 progress=not args.quiet, tokenizer=tok)
    base = profiler.profile(dense.path, "local", profiler.ProfileConfig(runs=args.runs, ops=False, branch_runs=0,
                                                                        runner=runner),
                            progress=not args.quiet)["levels"][0]["stats"]["p50"]
    own = json.loads((measured / "report.json").read_text())["levels"][0]["stats"]["p50"]
    from device.measure import machine

    cpu = machine()["cpu"]
    how = "the native runner" if runner == "native" else "ExecuTorch's Python runtime"
    print(f"\nedge demo: on this CPU ({cpu}; {how}, 1 thread, p50 of {args.runs} runs, {TOKENS} tokens):\n"
          f"  the ACMized MiniLM at budget {args.budget}: {own:.2f} ms at {report['model_fraction']:.3f} of the "
          f"original's FLOPs\n  the original, exported the same way ({original}): {base:.2f} ms\n"
          f"  time ratio {own / base:.2f}x")
    return rc


def _command(argv: list[str]):
    """Another subcommand, as its command line would run it (its own defaults, one place)."""
    args = parser().parse_args(argv)
    return args.fn(args)


def _add_acmize_args(p, output_default=None):
    p.add_argument("-o", "--output", required=output_default is None, default=output_default,
                   help="output directory (written atomically)")
    p.add_argument("--budget", type=number, default=0.5, help="target FFN compute fraction in (0, 1]")
    p.add_argument("--train-limit", type=count(1), default=None, help="use only the first N training passages")
    p.add_argument("--eval-limit", type=count(1), default=None, help="evaluate on the first N held-out passages")
    p.add_argument("--calib-limit", type=count(1), default=CALIB_LIMIT,
                   help=f"set the budget knob on the first N calibration passages (default {CALIB_LIMIT})")
    p.add_argument("--learners", type=int, default=AcmConfig.learners, help="learners per ACM (N >= 1)")
    p.add_argument("--gate-hidden", type=int, default=AcmConfig.gate_hidden,
                   help=f"hidden width of each ACM's gate (default {AcmConfig.gate_hidden}; its FLOPs count in the budget)")
    p.add_argument("--repr-steps", type=int, default=DistillConfig.repr_steps,
                   help="phase 1 steps (batches of 32; default: the precision's, "
                   + ", ".join(f"{p.repr_steps} at {n}" for n, p in PRECISIONS.items()) + ")")
    p.add_argument("--gate-steps", type=int, default=DistillConfig.gate_steps, help="phase 2 steps")
    p.add_argument("--e2e-steps", type=int, default=DistillConfig.e2e_steps,
                   help="phase 3 steps (default: the precision's, "
                   + ", ".join(f"{p.e2e_steps} at {n}" for n, p in PRECISIONS.items()) + ")")
    p.add_argument("--precision", choices=["auto", *PRECISIONS.names()], default=DistillConfig.precision,
                   help="of the training passes' matrix products (auto: bf16 where this CPU has it natively)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="phase 3 trains only the ACMs (by default attention and norms are fine-tuned too)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_measure_args(p, runs: int, budget: str) -> None:
    p.add_argument("--target", default="local",
                   help="where to measure: local (this CPU) or ssh://user@host[:port][?key=PATH&python=PYTHON&dir=DIR"
                        "&arch=ARCH&emulator=QEMU] (a Linux board)")
    p.add_argument("--runner", default="python",
                   help="the measuring program: python (the runtime's Python API, edge installed on the target), "
                        "native (the C++ runner for ExecuTorch artifacts, built here and pushed) or app "
                        "(android_demo's headless benchmark, adb target)")
    p.add_argument("--budget-ms", type=number, help=budget)
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
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **k: sub_add(*a, parents=[common], **k)  # (every subcommand takes --verbose)

    p = sub.add_parser("data", help="fetch the real data (Jane Austen text; with --fashion, Fashion-MNIST) from Debian into the cache")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--fashion", action="store_true", help="also fetch Fashion-MNIST (Debian dataset-fashion-mnist)")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("acmize", help="convert a model's FFNs into ACMs by distillation")
    p.add_argument("model", nargs="?", default=None,
                   help="local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--init", choices=["slices", "random"], default="slices", help="learner initialization")
    p.add_argument("--text", help="your own UTF-8 text file, one passage per line (default: Jane Austen)")
    _add_acmize_args(p)
    p.set_defaults(fn=cmd_acmize)

    p = sub.add_parser("eval", help="evaluate an ACMized model against its original on held-out text")
    p.add_argument("acm_dir", help="directory written by `edge acmize`")
    p.add_argument("--original", help="original model directory (default: the one it was converted from)")
    p.add_argument("--text", help="your own UTF-8 text file, one passage per line (default: Jane Austen)")
    p.add_argument("--limit", type=count(1), default=None, help="evaluate on the first N held-out passages")
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="export an adaptive model to a runtime, keeping its exits, skips and ACM routing")
    p.add_argument("model_dir", help="directory written by edge.save / `edge acmize`")
    p.add_argument("--to", required=True, choices=["onnx", "executorch", "litert"],
                   help="target runtime (litert: the routed mode, the example's token count; the litert extra)")
    p.add_argument("--mode", choices=["graph", "routed"], default=None,
                   help="graph: the control flow inside one program (cond/If, gathers); routed: plain "
                        "segments between the gates, run by the plan's driver (default: the faster one "
                        "for the runtime, measured: routed for executorch, graph for onnx; litert takes routed only)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (atomically)")
    p.add_argument("--tokens", type=count(2), default=TOKENS, help="token count of the example input (the graph takes 2..max)")
    p.add_argument("--text", help="your own UTF-8 text file for the example input (default: Jane Austen)")
    p.add_argument("--budgets", type=number, nargs="+",
                   help="budget levels to record in the plan, as fractions of the original FLOPs (e.g. 1 0.75 0.5); "
                        "each gets the knobs edge.set_budget_ picks on calibration passages")
    p.add_argument("--calib", type=count(1), default=128, help="calibration passages for --budgets (default 128)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("profile", help="measure an exported artifact on a target, per budget level and branch, "
                                       "against a latency budget (exit 1 on FAIL)")
    p.add_argument("artifact", help="directory written by `edge export`")
    _add_measure_args(p, runs=50, budget="latency budget in ms; PASS/FAIL is for the first budget level")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-ops", action="store_true", help="skip the per-operator profile")
    p.add_argument("--timeout", type=number, default=600.0, help="seconds before the measurement is stopped")
    p.add_argument("-o", "--output", help="write report.json, report.txt and latency.png into this directory")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("runner", help="build the native runner (C++ on ExecuTorch's Module API) for this machine "
                                      "or cross-compiled for an ARM Linux board")
    p.add_argument("--arch", help="x86_64 or aarch64 (default: this machine's)")
    p.add_argument("-o", "--output", help="directory for the binary and its libraries (default build/runner-ARCH)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(fn=cmd_runner)

    p = sub.add_parser("preset", help="choose a budget preset from measurements; list or show presets")
    p.add_argument("action", choices=["choose", "list", "show"])
    p.add_argument("path", nargs="?", help="choose: the artifact; list: a presets directory (default profiles/); "
                                           "show: a preset file")
    _add_measure_args(p, runs=30, budget="the latency budget the preset must meet")
    p.add_argument("--texts", type=count(1), default=64, help="held-out passages to measure quality on (default 64)")
    p.add_argument("--text", help="your own UTF-8 text file for the held-out passages (default: Jane Austen)")
    p.add_argument("--name", help="the preset's name (default: model-target-budget)")
    p.add_argument("-o", "--output", help="preset file to write (default profiles/NAME.yaml; a .png of the front beside it)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_preset)

    p = sub.add_parser("demo", help="the main job: ACMize the embedded MiniLM, report what it keeps, export it to "
                                    "ExecuTorch and measure it on this CPU")
    _add_acmize_args(p, output_default=DEFAULT_OUT)
    p.add_argument("--runs", type=int, default=30, help="timed runs per budget level of the measurement (default 30)")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The `edge` command. Exit codes: 0 done; 1 a latency budget failed (`edge profile`) or an internal
    error (its traceback in the log file it names); 2 a user error (one line); 130 Ctrl-C."""
    from edge.console import quiet_console

    args = parser().parse_args(argv)
    with quiet_console(getattr(args, "verbose", False)) as log:
        try:
            rc = args.fn(args)
        except EdgeError as e:
            print(f"edge: error: {' '.join(str(e).split())}", file=terminal())
            return 2
        except KeyboardInterrupt:
            print("edge: interrupted; nothing was written", file=terminal())
            return 130
        except Exception as e:  # a bug, not the user's: one line, and the traceback where the log is
            import traceback

            traceback.print_exc()  # (to sys.stderr: the log, or the terminal with --verbose)
            where = "above" if log is None else f"in {log}"
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"edge: error: internal error ({type(e).__name__}: {first}); the traceback is {where}; "
                  "please report it", file=terminal())
            return 1
        from edge.errors import interrupted

        if interrupted():  # (a Ctrl-C that a library swallowed: every write since was refused)
            print("edge: interrupted; nothing was written", file=terminal())
            return 130
    return rc if isinstance(rc, int) else 0  # (a command may return its report)
