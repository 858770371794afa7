"""Structured pruning (issue 38): OPTIN (edge.prune) against two baselines at the same FLOP fractions,
on MiniLM (the novel task: a linear probe fitted on the ORIGINAL model's embeddings, applied unchanged;
the whole test split) and on the Fashion-MNIST ViT trained here (edge.vision; 2,000 test images):

  optin      edge.prune: heads and FFN neurons scored by their damage along the trajectory (one
             calibration batch of --sequences sequences, scored once, then solved for every fraction),
             then the refit (the kept output projections re-solved by least squares on 256 sequences);
  optin-paper  the same without the refit: OPTIN as published (its latency is optin's: the same shapes);
  magnitude  the same solver, slicing and refit, units ranked by their weights' norms (a head: the norm of its
             q, k, v rows and o columns; a neuron: |fc1 row| * |fc2 column|);
  layerdrop  whole layers dropped, as many as the fraction allows (its FLOPs are at or below it), the
             layers chosen greedily by the same damage on the calibration batch.

For each: `acc` (top-1 of the probe, or of the ViT's classifier), `acc_full` (the original's), `cos_mean`
(the output against the original's: the embedding, or the logits), `flops_frac` (edge's FLOP count on
the test inputs, against the original's), and the measured latency ratio against the unpruned model
exported the same way, in the same run, 1 thread: ExecuTorch through the native runner (one process,
all artifacts in turn) and ONNX Runtime (Python, the runs interleaved); MiniLM at --tokens tokens, the
ViT at its 28x28 image (`dense_ms`: the unpruned model's median, per task and runtime). Fractions: MiniLM
0.8, 0.6, 0.4; the ViT 0.8, 0.7 (its target), 0.6, 0.4. `prune_seconds`: OPTIN's scoring and solving of
MiniLM at the first fraction.

    .venv/bin/python bench/prune.py --tasks minilm --runs 20   # ~15 minutes on 2 cores (scoring uses both)
    .venv/bin/python bench/prune.py --tasks fashion-vit        # ~4 minutes once the ViT is trained
    .venv/bin/python bench/prune.py --tasks minilm --no-latency
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import edge
import export
from device.measure import machine
from edge.forward import run
from edge.pruning import _calibration, importance, prune

sys.path.insert(0, str(Path(__file__).parent))
from acm_fidelity import held_out  # noqa: E402
from export_speed import interleaved, native_medians, text_example  # noqa: E402

FRACTIONS = (0.8, 0.6, 0.4)
VIT_FRACTIONS = (0.8, 0.7, 0.6, 0.4)  # (0.7: the ViT's target, after OPTIN's DeiT figures)
METHODS = ("optin", "optin-paper", "magnitude", "layerdrop")
REFIT = edge.PruneConfig.refit_sequences


def magnitude(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    arch = edge.arch_for(model)
    heads, neurons = [], []
    for layer in arch.layers(model):
        h = arch.heads(layer)
        rows = torch.cat([h.q.weight, h.k.weight, h.v.weight, h.o.weight.T], 1)  # (H*dh, 4d)
        heads.append(rows.pow(2).sum(1).view(h.count, h.head_dim).sum(1).sqrt())
        ffn = arch.ffn(layer, model.config)
        neurons.append(ffn.fc1.weight.norm(dim=1) * ffn.fc2.weight.norm(dim=0))
    return heads, neurons


def _layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The module and attribute holding the model's layers as a ModuleList."""
    layers = edge.arch_for(model).layers(model)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and list(child) == layers:
                return module, name
    raise SystemExit("prune.py: cannot find the layers' ModuleList")


def layerdrop(model: nn.Module, fraction: float, batch: dict, target: torch.Tensor) -> nn.Module:
    """`model` with whole layers dropped until its FLOPs are at most `fraction` of the original's (at the
    calibration batch's lengths), each time the layer whose removal moves its output on `batch` least
    from `target` (the original's output there)."""
    model = copy.deepcopy(model)
    owner, name = _layer_list(model)
    full = float(run(model, batch)[1].flops.sum())
    while float(run(model, batch)[1].flops.sum()) > fraction * full:
        kept = list(getattr(owner, name))
        best = None
        for i in range(len(kept)):
            setattr(owner, name, nn.ModuleList(kept[:i] + kept[i + 1:]))
            with torch.no_grad():
                out = run(model, batch)[0]
            damage = float((1 - F.cosine_similarity(out, target, dim=-1)).mean())
            if best is None or damage < best[0]:
                best = (damage, i)
        setattr(owner, name, nn.ModuleList(kept[:best[1]] + kept[best[1] + 1:]))
    return model


def outputs(model, batches):
    """(outputs, FLOPs spent) on `batches`, by edge's eager forward and its FLOP count."""
    with torch.no_grad():
        out, spent = [], 0.0
        for b in batches:
            y, trace = run(model, b)
            out.append(y)
            spent += float(trace.flops.sum())
    return torch.cat(out), spent


def minilm(args):
    model, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    test_b, teacher_out, probe, y, _ = held_out(model, tok, passages, args.test_limit)
    calib = edge.batches(tok, passages.split("calib").texts[:max(args.sequences, REFIT)], 64)
    example = text_example(tok, passages.split("test").texts, args.tokens)
    return model, calib, test_b, teacher_out, (lambda out: probe.accuracy(out, y)), example


def fashion_vit(args):
    from edge.data import fashion_mnist
    from edge.vision import fashion_vit as load, image_batches

    model = load()
    model.config._attn_implementation = "eager"
    x, _ = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    test_b = image_batches(xt[:2000])
    with torch.no_grad():
        teacher_out = torch.cat([edge.arch_for(model).output(model, b) for b in test_b])
    calib = image_batches(x[-max(args.sequences, REFIT):])
    yt = torch.as_tensor(yt[:2000])
    return (model, calib, test_b, teacher_out, (lambda out: float((out.argmax(-1) == yt).float().mean())),
            {"pixel_values": xt[:1] if xt.dim() == 4 else image_batches(xt[:1])[0]["pixel_values"]})


def latency(models: dict, example: dict, runtimes: list[str], runs: int) -> dict:
    """{runtime: {name: median ms}} for each model exported plainly to each runtime, 1 thread."""
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rt in runtimes:
            arts = {name: export.to_runtime(m, rt, Path(tmp) / f"{name}-{rt}", example, progress=False)
                    for name, m in models.items()}
            if rt == "executorch":
                got[rt] = native_medians({n: a.path for n, a in arts.items()}, [], runs)
            else:
                values = [example[k].numpy() for k in edge.arch_for(next(iter(models.values()))).inputs]
                runners = {n: a.runner(threads=1) for n, a in arts.items()}
                got[rt] = interleaved({n: (lambda r=r: r(values)) for n, r in runners.items()}, runs)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["minilm", "fashion-vit"], choices=["minilm", "fashion-vit"])
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="MiniLM's")
    ap.add_argument("--vit-fractions", type=float, nargs="+", default=list(VIT_FRACTIONS), help="the ViT's")
    ap.add_argument("--sequences", type=int, default=edge.PruneConfig.sequences, help="calibration sequences")
    ap.add_argument("--test-limit", type=int, default=None, help="MiniLM: the first N test passages (default: all)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--runtimes", nargs="+", default=["executorch", "onnx"])
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = {k: [] for k in ("task", "method", "flops_frac", "acc", "acc_full", "cos_mean",
                            "latency_ratio_executorch", "latency_ratio_onnx")}
    prune_seconds, dense_ms = None, {}
    fractions = {"minilm": args.fractions, "fashion-vit": args.vit_fractions}
    for task in args.tasks:
        model, calib, test_b, teacher_out, acc_of, example = (minilm if task == "minilm" else fashion_vit)(args)
        acc_full = acc_of(teacher_out)
        batch = _calibration(calib, args.sequences)
        with torch.no_grad():
            target = edge.arch_for(model).output(model, batch)
        t0 = time.time()
        scores = importance(model, batch, edge.PruneConfig(sequences=args.sequences))
        made = {}
        for f in fractions[task]:
            cfg = edge.PruneConfig(flops=f, sequences=args.sequences,
                                   multiple=min(32, edge.arch_for(model).dims(model)[1] // 8))
            made[("optin", f)] = prune(model, cfg, calib, scores=scores, progress=False)
            if task == "minilm" and prune_seconds is None:
                prune_seconds = round(time.time() - t0, 1)
            made[("optin-paper", f)] = prune(model, replace(cfg, refit=False), calib, scores=scores, progress=False)
            made[("magnitude", f)] = prune(model, cfg, calib, scores=magnitude(model), progress=False)
            made[("layerdrop", f)] = layerdrop(model, f, batch, target)
        timed = {f"{m}@{f}": v for (m, f), v in made.items() if m != "optin-paper"}
        ms = {} if args.no_latency else latency({"dense": model, **timed}, example, args.runtimes, args.runs)
        dense_ms[task] = {rt: round(t["dense"], 3) for rt, t in ms.items()}
        for t in ms.values():
            t.update({f"optin-paper@{f}": t[f"optin@{f}"] for f in fractions[task]})
        full = outputs(model, test_b)[1]
        for (method, f), m in made.items():
            out, spent = outputs(m, test_b)
            frac = spent / full  # (against the original: a model with layers dropped counts fewer as "full")
            cos = F.cosine_similarity(out, teacher_out, dim=-1).mean()
            rows["task"].append(task)
            rows["method"].append(method)
            rows["flops_frac"].append(round(frac, 4))
            rows["acc"].append(round(acc_of(out), 4))
            rows["acc_full"].append(round(acc_full, 4))
            rows["cos_mean"].append(round(float(cos), 5))
            for rt in ("executorch", "onnx"):
                t = ms.get(rt)
                rows[f"latency_ratio_{rt}"].append(round(t[f"{method}@{f}"] / t["dense"], 3) if t else None)
            print(f"{task} {method} {f}: " + ", ".join(f"{k} {v[-1]}" for k, v in rows.items() if k not in ("task", "method")),
                  flush=True)
    print(json.dumps({**rows, "fractions": {t: fractions[t] for t in args.tasks}, "prune_seconds": prune_seconds,
                      "dense_ms": dense_ms, "cpu": machine()["cpu"]}))


if __name__ == "__main__":
    main()
