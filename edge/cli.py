"""The `edge` command: a thin layer, one subcommand per public verb. User errors exit with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.convert import DistillConfig
from edge.errors import EdgeError

DEFAULT_OUT = "out/minilm-acm"


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
    from edge.io import atomic_dir, write_json_atomic

    config = edge.AcmConfig(budget=args.budget, learners=args.learners, init=args.init)
    distill = DistillConfig(repr_steps=args.repr_steps, gate_steps=args.gate_steps, e2e_steps=args.e2e_steps)
    out = Path(args.output)
    if out.exists() and not args.overwrite:  # fail before minutes of training, not after
        raise EdgeError(f"{out} already exists; choose another output directory or pass --overwrite")
    passages = _passages(args.text)
    model, tok = edge.load_pretrained(args.model)
    train = passages.split("train")
    if args.train_limit:
        train = train.head(args.train_limit)
    t0 = time.time()
    acm = edge.acmize(model, config, batches(tok, train.texts, 32), batches(tok, passages.split("calib").texts[:512], 64),
                      distill, progress=not args.quiet)
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
    report = _public(evaluate(acm, model, tok, _passages(args.text), limit=args.limit))
    print(_summary(report))
    if args.json:
        print(json.dumps(report))
    return report


def cmd_export(args) -> None:
    import edge
    import export

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
    text = _passages(args.text).split("test").texts[0]
    example = dict(tok([text], padding="max_length", truncation=True, max_length=args.tokens, return_tensors="pt"))
    export.to_runtime(model, args.to, args.output, example, overwrite=args.overwrite, progress=not args.quiet,
                      mode=args.mode)


def cmd_demo(args) -> None:
    args.model, args.text, args.init, args.train_limit, args.eval_limit = None, None, "slices", None, None
    args.overwrite = True  # the demo owns its default output directory; the swap is atomic
    print(f"edge demo: ACMize all-MiniLM-L6-v2 at budget {args.budget} on Jane Austen, then evaluate "
          "on held-out passages", file=sys.stderr)
    cmd_acmize(args)


def _add_acmize_args(p, output_default=None):
    p.add_argument("-o", "--output", required=output_default is None, default=output_default,
                   help="output directory (written atomically)")
    p.add_argument("--budget", type=float, default=0.5, help="target FFN compute fraction in (0, 1]")
    p.add_argument("--learners", type=int, default=4, help="learners per ACM (N >= 1)")
    p.add_argument("--repr-steps", type=int, default=DistillConfig.repr_steps, help="phase 1 steps (batches of 32)")
    p.add_argument("--gate-steps", type=int, default=DistillConfig.gate_steps, help="phase 2 steps")
    p.add_argument("--e2e-steps", type=int, default=DistillConfig.e2e_steps, help="phase 3 steps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge", description="Make pretrained transformers adaptive for edge devices.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fetch the real data (Jane Austen text; with --fashion, Fashion-MNIST) from Debian into the cache")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--fashion", action="store_true", help="also fetch Fashion-MNIST (Debian dataset-fashion-mnist)")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("acmize", help="convert a model's FFNs into ACMs by distillation")
    p.add_argument("model", nargs="?", default=None,
                   help="local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--init", choices=["slices", "random"], default="slices", help="learner initialization")
    p.add_argument("--text", help="your own UTF-8 text file, one passage per line (default: Jane Austen)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training passages")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out passages")
    _add_acmize_args(p)
    p.set_defaults(fn=cmd_acmize)

    p = sub.add_parser("eval", help="evaluate an ACMized model against its original on held-out text")
    p.add_argument("acm_dir", help="directory written by `edge acmize`")
    p.add_argument("--original", help="original model directory (default: the one it was converted from)")
    p.add_argument("--text", help="your own UTF-8 text file, one passage per line (default: Jane Austen)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out passages")
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="export an adaptive model to a runtime, keeping its exits, skips and ACM routing")
    p.add_argument("model_dir", help="directory written by edge.save / `edge acmize`")
    p.add_argument("--to", required=True, choices=["onnx", "executorch"], help="target runtime")
    p.add_argument("--mode", choices=["graph", "routed"], default=None,
                   help="graph: the control flow inside one program (cond/If, gathers); routed: plain "
                        "segments between the gates, run by the plan's driver (default: the faster one "
                        "for the runtime, measured: routed for executorch, graph for onnx)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write (atomically)")
    p.add_argument("--tokens", type=int, default=128, help="token count of the example input (the graph takes 2..max)")
    p.add_argument("--text", help="your own UTF-8 text file for the example input (default: Jane Austen)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("demo", help="the main job: ACMize the embedded MiniLM and report what it keeps")
    _add_acmize_args(p, output_default=DEFAULT_OUT)
    p.set_defaults(fn=cmd_demo)
    return ap


def _quiet_third_party() -> None:
    # transformers imports torchao when it is installed, and torchao logs warnings about optional
    # GPU kernels; they are noise to a CLI user and would bury a one-line error.
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_third_party()
    try:
        args.fn(args)
    except EdgeError as e:
        print(f"edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0
