"""Does the exported control flow save time on the runtime? MiniLM (128 tokens), side by side in one
run, medians of --runs calls each (all cases of a runtime and mode timed in turn, so that the
machine's noise falls on all alike), for every registered runtime:

  dense      the original model through the same lowering (torch.export + XNNPACK for ExecuTorch,
             torch.onnx dynamo export for ONNX Runtime, eager attention): the ratios are against it;
  user       the original model exported as a user would today, with its own (SDPA) attention:
             reported as user_ms and acm50_vs_user (edge's export also picks a faster attention);
  noffn      the original model with its FFNs removed (residual and LayerNorm kept), same lowering:
             dense - noffn is the time of the dense FFNs, measured rather than inferred;
  gated      MiniLM with ACM FFNs (4 learners), exits after layers 2..5 and a skip router per layer,
             exported once per mode (graph: the control flow inside one program; routed: segments
             between the gates run by the plan's driver) and steered only through its knob inputs:
             every gate open (all learners, no exit, no skip), ACM at 50 % of the learners (each
             ACM's gate bias set so that its mean k is N/2, as calibration sets a converted model),
             ACM at k = 0, and an exit after layer k;
  acm        the same MiniLM with its ACM FFNs only (no exits, no routers), exported and timed beside
             the rest at 50 % of the learners and at k = 0 (the same gate biases): the ACM bullet's
             figures for a model converted to ACMs alone, and what the exits and routers add to them.

Figures (ratios of medians):
  acm50_model_ratio  gated at 50 % learners / dense;
  acm50_ffn_ratio    FFN part at 50 %: (gated@50% - gated@k=0) / (dense - gated@k=0) (the issue's
                     first form: its denominator is the dense FFN less the gated model's fixed cost);
  acm50_ffn_vs_dense_ffn  (gated@50% - gated@k=0) / (dense - noffn): what running half the learners
                     adds, over what the dense FFNs take (the gate MLP's own cost is in neither);
  fixed_ratio        (gated@k=0 - noffn) / dense: the gated model's fixed cost (gate MLPs, exit heads,
                     routers, the calls between segments) with no learner run;
  overhead_ratio     gated with every gate open / dense;
  exit_ratio         exit after layer 2 / the gated full path (target <= 2/6 + 0.1);
  max_abs_diff       over every bundled branch-forcing case (verify).
  acm_only_*         the first three and fixed_ratio for the ACM-only model (its own k = 0 and parity).
ExecuTorch's artifacts (both modes) are also timed through the native runner (profiler/runner: the
plan's driver in C++ on ExecuTorch's Module API, what an ARM board or a phone runs; the cases are the
artifact's budget levels, timed in turn with dense in one runner process): the rows "executorch:<mode>:native",
whose acm50_vs_user is null (the user's export is timed in Python only). The Python rows of the
routed mode pay Python's cost per method call (25 calls a run with every gate open), which a device
does not.
The weights of the ACMs, exits and routers are untrained (parity is checked on every branch all the
same), so the gates' k spreads over the tokens as random gates spread it; with --acm DIR the ACMs are
a converted model's (edge demo writes one to out/minilm-acm), whose trained gates choose k as a user's
model does (still set to a mean k of N/2 on the timed input); the exits and routers stay untrained.

With --quantize SCHEME (edge.quant: 8da8w, 8da4w) every model above is quantized before its export
(dense, noffn, gated and acm are then the int8 ones; the ratios are against the int8 dense model) and
the fp32 dense export is timed beside them as "fp32dense"; the figures get the prefix int8_, and
int8_dense_vs_fp32_dense, int8_acm50_vs_fp32_dense, size_ratio (program bytes, int8 dense / fp32 dense),
branch_mismatches and near_threshold (verify's, against the same quantization in eager) join them.
Runtimes whose lowering takes no quantized model are left out, and said so.

    taskset -c 0 .venv/bin/python bench/export_speed.py      # 1 core; ORT and XNNPACK on 1 thread
                                                             # (about 15 minutes; --no-native: without the C++ runner)
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import edge
import export
from export.graph import GraphModel
from device.runtime import RUNTIMES
from edge.quant import SCHEMES, QuantConfig
from export.runtime import precisions

EXIT_AFTER = 2


def user_dense(model: nn.Module, rt: str, directory: Path, inputs: list[torch.Tensor]):
    """The original model as a user exports it today (its own attention, torch.export, the runtime's
    usual lowering), loaded for 1 thread."""
    arch = edge.arch_for(model)

    class Plain(nn.Module):
        def forward(self, input_ids, attention_mask):
            return arch.hf_output(model, {"input_ids": input_ids, "attention_mask": attention_mask})

    return lowered(Plain(), rt, directory, inputs)


def lowered(module: nn.Module, rt: str, directory: Path, inputs: list[torch.Tensor]):
    """module(input_ids, attention_mask) through torch.export (the token dimension dynamic) and the
    runtime's usual lowering, loaded for 1 thread: the forward's runner."""
    tokens = torch.export.Dim("tokens", min=2, max=512)
    with torch.no_grad():
        ep = torch.export.export(module, tuple(inputs), dynamic_shapes=({1: tokens}, {1: tokens}))
    directory.mkdir()
    from export.runtime import LOWERINGS

    return export.RUNTIMES.get(rt).load(directory, LOWERINGS.get(rt)({"forward": ep}, directory, False), 1)["forward"]


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def without_ffn(model: nn.Module) -> nn.Module:
    """The model with every FFN replaced by zeros (the layer's residual and LayerNorm kept)."""
    model = copy.deepcopy(model)
    arch = edge.arch_for(model)
    for layer in arch.layers(model):
        arch.install(layer, Zero())
    return model


def bias_for_half(graph: GraphModel, inputs: list[torch.Tensor], knobs: dict) -> torch.Tensor:
    """Gate biases, one per ACM, that make each ACM's mean k over the real tokens N/2, layer by layer
    under the earlier ones (how edge.calibrate_budget_ sets a converted model: every layer at its budget)."""
    n = graph.adaptives[0].n
    mask = inputs[1][0].bool()
    bias = knobs["gate_bias"].clone()
    for a in range(len(bias)):
        lo, hi = -20.0, 20.0
        for _ in range(30):
            mid = (lo + hi) / 2
            bias[a] = knobs["gate_bias"][a] + mid
            with torch.no_grad():
                ks = graph(*inputs, *{**knobs, "gate_bias": bias}.values())[3]
            lo, hi = (lo, mid) if float(ks[a, mask].float().mean()) < n / 2 else (mid, hi)
        bias[a] = knobs["gate_bias"][a] + (lo + hi) / 2
    return bias


def text_example(tok, texts: list[str], tokens: int) -> dict:
    """The input the text benches time: the first 8 passages of `texts` joined, padded or cut to `tokens`."""
    example = tok([" ".join(texts[:8])], padding="max_length", truncation=True, max_length=tokens, return_tensors="pt")
    return {k: example[k] for k in ("input_ids", "attention_mask")}


def interleaved(cases: dict, runs: int, warmup: int = 3) -> dict:
    """{name: f()} -> {name: median ms}, the cases timed in turn so that the machine's noise falls on
    all of them alike (the ratios are what the benches report)."""
    for f in cases.values():
        for _ in range(warmup):
            f()
    ms = {name: [] for name in cases}
    for _ in range(runs):
        for name, f in cases.items():
            t0 = time.perf_counter()
            f()
            ms[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in ms.items()}


def routed_split(artifact, values: list[np.ndarray], runs: int) -> dict:
    """Where a routed run's time goes: ms per run in the learner methods, the segments that hold an
    attention, the other segments, and the driver itself (numpy and the calls' own cost)."""
    plan = artifact.plan
    methods = RUNTIMES.get(plan["runtime"]).load(artifact.path, plan["methods"], 1, "cpu")
    spent = {"learners": 0.0, "attention segments": 0.0, "other segments": 0.0}

    def timed_method(method, f):
        kind = "learners" if method.startswith("learner") else "attention segments" if "attention" in method else "other segments"

        def run(arrays):
            t0 = time.perf_counter()
            out = f(arrays)
            spent[kind] += time.perf_counter() - t0
            return out
        return run

    run = artifact.plan_runner({m: timed_method(m, f) for m, f in methods.items()})
    t0 = time.perf_counter()
    for _ in range(runs):
        run(values)
    total = time.perf_counter() - t0
    split = {k: v / runs * 1e3 for k, v in spent.items()}
    return {**split, "driver": total / runs * 1e3 - sum(split.values())}


def native_medians(plain: dict[str, Path], gated: list[Path], runs: int) -> dict:
    """{case: median ms} through the native runner (profiler/runner: ExecuTorch's C++ Module API with
    the plan's driver in C++, what a device runs): the plain artifacts ({case: path}) and each budget
    level of the gated ones (named after the cases), timed in turn, run by run, in ONE runner process
    (its side-by-side mode), so that the machine's noise falls on all alike (across processes the
    ratios move by +-0.05 here: bench/results/export_speed.txt)."""
    import subprocess

    from profiler import native
    from device.measure import read_records

    cmd = [str(native.ensure()), *map(str, [*plain.values(), *gated]), "--runs", str(runs), "--branch-runs", "0", "--no-ops"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"the native runner failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    names = {str(path): name for name, path in plain.items()}
    return {names.get(r["artifact"], r["name"]): statistics.median(r["ms"])
            for r in read_records(done.stdout) if r["kind"] == "level"}


def acm_figures(ms: dict, acm50: str, k0: str) -> dict:
    return {"acm50_ffn_ratio": (ms[acm50] - ms[k0]) / (ms["dense"] - ms[k0]),
            "acm50_ffn_vs_dense_ffn": (ms[acm50] - ms[k0]) / (ms["dense"] - ms["noffn"]),
            "fixed_ratio": (ms[k0] - ms["noffn"]) / ms["dense"],
            "acm50_model_ratio": ms[acm50] / ms["dense"]}


def program_bytes(artifact) -> int:
    return sum((artifact.path / f).stat().st_size for f in set(artifact.plan["methods"].values()))


def figures(name: str, ms: dict, report: dict, acm_report: dict, gated_s: float, dense_s: float) -> dict:
    return {"runtime": name, "ms": {k: round(v, 3) for k, v in ms.items()},
            **({"int8_dense_vs_fp32_dense": ms["dense"] / ms["fp32dense"],
                "int8_acm50_vs_fp32_dense": ms["acm50"] / ms["fp32dense"]} if "fp32dense" in ms else {}),
            "branch_mismatches": len(report["branch_mismatches"]), "near_threshold": len(report["near_threshold"]),
            **acm_figures(ms, "acm50", "k0"),
            "overhead_ratio": ms["open"] / ms["dense"],
            "exit_ratio": ms["exit"] / ms["open"],
            "acm50_vs_user": ms["acm50"] / ms["user"] if "user" in ms else None,
            "max_abs_diff": report["max_abs_diff"],
            **{f"acm_only_{k}": v for k, v in acm_figures(ms, "acm:acm50", "acm:k0").items()},
            "acm_only_max_abs_diff": acm_report["max_abs_diff"],
            "export_seconds_gated": round(gated_s, 1), "export_seconds_dense": round(dense_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--learners", type=int, default=edge.AcmConfig.learners,
                    help="learners per ACM (each 1/N of the FFN's width)")
    ap.add_argument("--gate-hidden", type=int, default=edge.AcmConfig.gate_hidden, help="hidden width of each ACM's gate")
    ap.add_argument("--acm", type=Path, metavar="DIR",
                    help="time this converted MiniLM (the output of edge demo or edge acmize: trained learners and "
                         "gates) instead of MiniLM with untrained ACMs; --learners and --gate-hidden are then the model's")
    ap.add_argument("--runtimes", nargs="+", default=export.RUNTIMES.names())
    ap.add_argument("--modes", nargs="+", default=list(export.MODES), choices=export.MODES)
    ap.add_argument("--quantize", choices=sorted(SCHEMES), help="quantize every model (edge.quant) and time the "
                    "fp32 dense export beside them")
    ap.add_argument("--no-native", action="store_true",
                    help="skip the ExecuTorch routed timings through the native (C++) runner")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tok = edge.load_pretrained()
    texts = edge.austen_passages().split("test").texts
    example = text_example(tok, texts, args.tokens)
    train = edge.batches(tok, edge.austen_passages().split("train").texts[:64], 16)
    if args.acm:
        try:
            gated = edge.load(args.acm)
        except edge.EdgeError as e:
            raise SystemExit(f"export_speed.py: {e}") from None
        if (edge.arch_for(gated).name, gated.config.hidden_size) != (edge.arch_for(model).name, model.config.hidden_size):
            raise SystemExit(f"{args.acm} is not a converted MiniLM (the dense exports it is compared with are)")
    else:
        gated = copy.deepcopy(model)
        edge.install_acms(gated, edge.AcmConfig(learners=args.learners, gate_hidden=args.gate_hidden))
    acm_only = copy.deepcopy(gated)
    gated = edge.add_exits(gated, edge.ExitConfig(after=[2, 3, 4, 5], steps=0), train, progress=False)
    gated = edge.add_skips(gated, edge.SkipConfig(samples=32), train, progress=False)
    fp32_model = model
    quant = (lambda m: edge.quantize(m, QuantConfig(args.quantize))) if args.quantize else (lambda m: m)
    model, gated, acm_only = quant(model), quant(gated), quant(acm_only)
    if args.quantize:
        left = [rt for rt in args.runtimes if not set(args.modes) & {m for m in export.MODES if args.quantize in precisions(rt, m)}]
        args.runtimes = [rt for rt in args.runtimes if rt not in left]
        if left:
            print(f"left out: {', '.join(left)} (their lowering takes no {args.quantize} model yet)")
    graph = GraphModel(gated)
    inputs = [example["input_ids"], example["attention_mask"]]
    own = graph.knobs()
    open_ = {"exit_thresholds": torch.ones(4), "skip_thresholds": torch.zeros(6), "gate_bias": own["gate_bias"] - 1e4}
    settings = {
        "open": open_,
        "acm50": {**open_, "gate_bias": bias_for_half(graph, inputs, {**open_, "gate_bias": own["gate_bias"]})},
        "k0": {**open_, "gate_bias": own["gate_bias"] + 1e4},
        "exit": {**open_, "exit_thresholds": torch.tensor([0.0, 1, 1, 1])},
    }
    with torch.no_grad():
        ks = graph(*inputs, *settings["acm50"].values())[3]
        assert int(graph(*inputs, *settings["exit"].values())[1]) == EXIT_AFTER
    half = float(ks[:, inputs[1][0].bool()].float().mean()) / graph.adaptives[0].n
    # the cases are also the artifacts' budget levels: what the native runner times
    levels = [{"name": name, **{k: v.tolist() for k, v in knobs.items()}} for name, knobs in settings.items()]
    acm_settings = {f"acm:{name}": {"gate_bias": settings[name]["gate_bias"]} for name in ("acm50", "k0")}
    acm_levels = [{"name": name, "gate_bias": knobs["gate_bias"].tolist()} for name, knobs in acm_settings.items()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rt in args.runtimes:
            t0 = time.time()
            dense_a = export.to_runtime(model, rt, Path(tmp) / f"dense-{rt}", example, progress=False)
            dense_s = time.time() - t0
            noffn_a = export.to_runtime(quant(without_ffn(fp32_model)), rt, Path(tmp) / f"noffn-{rt}", example,
                                        progress=False)
            x = [t.numpy() for t in inputs]
            dense_run, noffn_run = dense_a.runner(threads=1), noffn_a.runner(threads=1)
            user_run = user_dense(fp32_model, rt, Path(tmp) / f"user-{rt}", inputs)
            plain = {"dense": dense_a.path, "noffn": noffn_a.path}
            fp32_cases, size_ratio = {}, None
            if args.quantize:
                fp32_a = export.to_runtime(fp32_model, rt, Path(tmp) / f"fp32dense-{rt}", example, progress=False)
                fp32_cases = {"fp32dense": (lambda r=fp32_a.runner(threads=1): r(x))}
                plain["fp32dense"] = fp32_a.path
                size_ratio = program_bytes(dense_a) / program_bytes(fp32_a)
            for mode in [m for m in args.modes if m in RUNTIMES.get(rt).modes
                         and (not args.quantize or args.quantize in precisions(rt, m))]:
                t0 = time.time()
                gated_a = export.to_runtime(gated, rt, Path(tmp) / f"gated-{rt}-{mode}", example, progress=False,
                                            mode=mode, levels=levels)
                gated_s = time.time() - t0
                acm_a = export.to_runtime(acm_only, rt, Path(tmp) / f"acm-{rt}-{mode}", example, progress=False,
                                          mode=mode, levels=acm_levels)
                report, acm_report = export.verify(gated_a), export.verify(acm_a)
                run, acm_run = gated_a.runner(threads=1), acm_a.runner(threads=1)
                knob_values = {name: [v.numpy().astype(np.float32) for v in k.values()]
                               for name, k in {**settings, **acm_settings}.items()}
                cases = {"dense": lambda: dense_run(x), "noffn": lambda: noffn_run(x), "user": lambda: user_run(x),
                         **fp32_cases,
                         **{name: (lambda r=acm_run if name in acm_settings else run, v=v: r(x + v))
                            for name, v in knob_values.items()}}
                ms = interleaved(cases, args.runs)
                row = figures(f"{rt}:{mode}", ms, report, acm_report, gated_s, dense_s)
                row["size_ratio"] = size_ratio
                if mode == "routed":
                    split = routed_split(gated_a, x + knob_values["open"], args.runs)
                    print(f"{rt}:routed, every gate open, ms per run: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in split.items()) + f" (dense {ms['dense']:.2f})")
                print(json.dumps(row), flush=True)
                rows.append(row)
                if rt == "executorch" and not args.no_native:
                    ms = native_medians(plain, [gated_a.path, acm_a.path], args.runs)
                    rows.append({**figures(f"{rt}:{mode}:native", ms, report, acm_report, gated_s, dense_s),
                                 "size_ratio": size_ratio})
                    print(json.dumps(rows[-1]), flush=True)
    print(f"acm50 ran {half:.3f} of the learners on real tokens; exit after layer {EXIT_AFTER} of 6 "
          f"(target exit_ratio <= {EXIT_AFTER / 6 + 0.1:.3f})")
    keys = ["acm50_ffn_ratio", "acm50_model_ratio", "overhead_ratio", "exit_ratio", "max_abs_diff", "acm50_vs_user",
            "acm50_ffn_vs_dense_ffn", "fixed_ratio", "acm_only_acm50_ffn_ratio", "acm_only_acm50_model_ratio",
            "acm_only_acm50_ffn_vs_dense_ffn", "acm_only_fixed_ratio", "acm_only_max_abs_diff"]
    if args.quantize:
        keys += ["int8_dense_vs_fp32_dense", "int8_acm50_vs_fp32_dense", "size_ratio", "branch_mismatches", "near_threshold"]
    named = {"max_abs_diff": "max_abs_diff_vs_quantized_eager", "size_ratio": "size_ratio",
             "branch_mismatches": "branch_mismatches", "near_threshold": "near_threshold"}
    prefix = lambda k: k if not args.quantize or k.startswith("int8_") else named.get(k, f"int8_{k}")  # noqa: E731
    print(json.dumps({"runtime": [r["runtime"] for r in rows], **({"scheme": args.quantize} if args.quantize else {}),
                      **{prefix(k): [r[k] if k.endswith("max_abs_diff") or r[k] is None or isinstance(r[k], int)
                                     else round(r[k], 4) for r in rows] for k in keys},
                      "learner_fraction_at_acm50": round(half, 3),
                      "export_seconds": [r["export_seconds_gated"] for r in rows]}))


if __name__ == "__main__":
    main()
