"""edge's exports beside the peer tool, Hugging Face optimum, on the embedded MiniLM: 128 tokens, 1
thread, medians of --runs calls, every case of a runtime timed in turn (so that the machine's noise
falls on all alike). optimum runs as a user runs it, its CLI in its own environment (its pins conflict
with edge's: `bash bench/setup_optimum.sh`), offline.

ExecuTorch (`optimum-cli export executorch`, optimum-executorch 1.1.0, its xnnpack recipe; ExecuTorch's
Python runtime):
  MiniLM's own task, the sentence embedding (--task feature-extraction), is tried first; optimum-executorch
  1.1.0 fails on a BERT encoder (the line it printed is reported; were it to export, it would be timed
  as "optimum" and compared directly). So:
  optimum_mlm  --task fill-mask: the encoder and a masked-LM head (the checkpoint has none, so
               transformers initializes one; its 30522-way projection costs more than the encoder);
  user_mlm     the same AutoModelForMaskedLM through torch.export (its SDPA attention) and XNNPACK, as
               bench/export_speed.py's user row exports: whether that row stands for the peer tool;
  user         the encoder (MiniLM's mean-pooled embedding) exported that way: export_speed's user row;
  dense        edge's dense export of the encoder (export.to_executorch): export_speed's ratios are against it.
  Figures: optimum_vs_user_mlm; dense_vs_user; dense_vs_optimum_encoder = dense / (optimum_mlm -
  (user_mlm - user)), the peer's encoder with the head's time of the user pair taken off (an estimate:
  the head is lowered alike in both).
With --quantize SCHEME (8da8w, 8da4w; ExecuTorch only): optimum's quantized recipe (`--qlinear SCHEME`,
groups of 32 for 8da4w, fill-mask) beside edge's exports quantized alike (edge.quant), all through
ExecuTorch's Python runtime. (Not `--qembedding 8w`: its program calls quantized_decomposed::embedding_byte,
a kernel that ExecuTorch 1.5.1's Python runtime does not have; a lookup's time is negligible, its bytes are
not: optimum's file keeps fp32 tables, edge's int8 rows.)
  optimum_mlm  optimum's quantized fill-mask program;
  user_mlm, user  the masked-LM model and the encoder with torchao's quantize_ (Int8DynamicActivationIntx-
               WeightConfig, the config optimum applies) through torch.export and ExecuTorch's
               to_edge_transform_and_lower with the XNNPACK partitioner: their difference
               is the quantized head's time, taken off optimum's program as above;
  dense        edge's int8 dense export; acm50: edge's int8 ACM model (--acm DIR: a converted MiniLM,
               `edge demo` writes out/minilm-acm) in graph mode, one program as optimum's, its gate biases
               set so that half the learners run (bench/export_speed.py's acm50).
  Figures: acm50_int8_vs_optimum_int8 = acm50 / (optimum_mlm - (user_mlm - user)), dense_int8_vs_optimum_int8
  likewise, optimum_vs_user_mlm.

ONNX Runtime (`optimum-cli export onnx --task feature-extraction`, optimum-onnx 0.1.0: MiniLM's task):
  optimum      its model.onnx in ORT's default session (what optimum's ORTModel opens);
  optimum_O2   after `optimum-cli onnxruntime optimize -O2` (ORT's transformer fusions), default session;
  optimum_edge_session  optimum's model.onnx in a session like edge's (device.onnx.SLOW_FUSIONS left out);
  dense        edge's dense export (export.to_onnx) in edge's session.
  Figures: dense_vs_optimum, dense_vs_optimum_O2, and parity: optimum's last hidden state mean-pooled
  and normalized as MiniLM does, against edge's output (max abs diff).

    bash bench/setup_optimum.sh                       # once (~2 minutes)
    taskset -c 0 .venv/bin/python bench/peer_optimum.py     # ~4 minutes
    taskset -c 0 .venv/bin/python bench/peer_optimum.py --runtimes executorch --quantize 8da8w --acm out/minilm-acm
Last line: one JSON object, {runtime: figures}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import edge
import export

sys.path.insert(0, str(Path(__file__).parent))
from export_speed import bias_for_half, interleaved, lowered, user_dense  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLIS = {"executorch": ROOT / ".venv-optimum" / "bin" / "optimum-cli",
        "onnx": ROOT / ".venv-optimum-onnx" / "bin" / "optimum-cli"}


def optimum(cli: Path, args: list[str], out: Path, name: str) -> tuple[Path | None, str, float]:
    """(out/name, or None and the line optimum printed last, seconds): one optimum-cli command, offline."""
    t0 = time.time()
    done = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.time() - t0
    if done.returncode == 0 and (out / name).is_file():
        return out / name, "", seconds
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(" ")]
    return None, (lines or [f"exit {done.returncode}"])[-1][:200], seconds


class Logits(nn.Module):
    """A masked-LM model as module(input_ids, attention_mask) -> logits."""

    def __init__(self, mlm: nn.Module):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask):
        return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits


def timed(cases: dict, x: list[np.ndarray], runs: int) -> dict:
    print("timing " + ", ".join(cases), flush=True)
    return {k: round(v, 3) for k, v in interleaved({n: (lambda f=f: f(x)) for n, f in cases.items()}, runs).items()}


def executorch_peer(cli: Path, model_dir: Path, model: nn.Module, inputs: list[torch.Tensor], tmp: Path, runs: int) -> dict:
    import transformers
    from transformers import AutoModelForMaskedLM

    et = export.RUNTIMES.get("executorch")
    x = [t.numpy() for t in inputs]
    cases, seconds, failed = {}, {}, {}
    for task, name in (("feature-extraction", "optimum"), ("fill-mask", "optimum_mlm")):
        print(f"optimum-cli export executorch --task {task} ...", flush=True)
        pte, why, seconds[name] = optimum(cli, ["export", "executorch", "-m", str(model_dir), "--task", task,
                                                "--recipe", "xnnpack", "-o", str(tmp / name)], tmp / name, "model.pte")
        if pte is None:
            failed[task] = why
            print(f"  failed: {why}", flush=True)
            continue
        cases[name] = et.load(pte.parent, {"forward": pte.name}, 1)["forward"]
        if not np.isfinite(cases[name](x)[0]).all():
            raise SystemExit(f"peer_optimum.py: optimum's {task} program returned non-finite values")
    if "optimum_mlm" not in cases:
        raise SystemExit(f"peer_optimum.py: optimum-cli could not export the fill-mask model ({failed['fill-mask']})")

    t0 = time.time()
    transformers.logging.set_verbosity_error()  # (its table of the head's newly initialized weights)
    cases["user_mlm"] = lowered(Logits(AutoModelForMaskedLM.from_pretrained(model_dir).eval()), "executorch",
                                tmp / "user_mlm", inputs)
    seconds["user_mlm"] = time.time() - t0
    t0 = time.time()
    cases["user"] = user_dense(model, "executorch", tmp / "user", inputs)
    seconds["user"] = time.time() - t0
    t0 = time.time()
    cases["dense"] = export.to_executorch(model, tmp / "dense", dict(zip(("input_ids", "attention_mask"), inputs)),
                                          progress=False).runner(threads=1)
    seconds["dense"] = time.time() - t0
    ms = timed(cases, x, runs)
    head = ms["user_mlm"] - ms["user"]
    return {"ms": ms, "optimum_vs_user_mlm": round(ms["optimum_mlm"] / ms["user_mlm"], 4),
            "dense_vs_user": round(ms["dense"] / ms["user"], 4),
            "dense_vs_optimum_encoder": round(ms["dense"] / (ms["optimum_mlm"] - head), 4),
            "dense_vs_optimum": round(ms["dense"] / ms["optimum"], 4) if "optimum" in ms else None,
            "optimum_failed": failed, "export_seconds": {k: round(v, 1) for k, v in seconds.items()}}


def onnx_peer(cli: Path, model_dir: Path, model: nn.Module, inputs: list[torch.Tensor], tmp: Path, runs: int) -> dict:
    from device.onnx import SLOW_FUSIONS
    from ort_fusions import session

    seconds = {}
    print("optimum-cli export onnx --task feature-extraction ...", flush=True)
    path, why, seconds["optimum"] = optimum(cli, ["export", "onnx", "-m", str(model_dir), "--task", "feature-extraction",
                                                  str(tmp / "optimum")], tmp / "optimum", "model.onnx")
    if path is None:
        raise SystemExit(f"peer_optimum.py: optimum-cli could not export MiniLM to ONNX ({why})")
    print("optimum-cli onnxruntime optimize -O2 ...", flush=True)
    o2, why, seconds["optimum_O2"] = optimum(cli, ["onnxruntime", "optimize", "--onnx_model", str(tmp / "optimum"), "-O2",
                                                   "-o", str(tmp / "optimum_O2")], tmp / "optimum_O2", "model_optimized.onnx")
    if o2 is None:
        raise SystemExit(f"peer_optimum.py: optimum-cli could not optimize the ONNX model ({why})")
    feeds = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy(),
             "token_type_ids": np.zeros_like(inputs[0].numpy())}

    def opened(p: Path, disabled: list[str]):  # [] is ORT's defaults, as optimum's ORTModel opens a model
        s = session(str(p), disabled)
        names = [i.name for i in s.get_inputs()]
        return lambda _x: s.run(None, {n: feeds[n] for n in names})

    t0 = time.time()
    dense = export.to_onnx(model, tmp / "dense", dict(zip(("input_ids", "attention_mask"), inputs)), progress=False)
    seconds["dense"] = time.time() - t0
    cases = {"optimum": opened(path, []), "optimum_O2": opened(o2, []),
             "optimum_edge_session": opened(path, list(SLOW_FUSIONS)), "dense": dense.runner(threads=1)}
    x = [t.numpy() for t in inputs]
    hidden = cases["optimum"](x)[0]  # (1, T, C): MiniLM's mean pooling over real tokens, then L2 norm
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    diff = float(np.abs(pooled - cases["dense"](x)[0]).max())
    ms = timed(cases, x, runs)
    return {"ms": ms, "dense_vs_optimum": round(ms["dense"] / ms["optimum"], 4),
            "dense_vs_optimum_O2": round(ms["dense"] / ms["optimum_O2"], 4),
            "optimum_edge_session_vs_optimum": round(ms["optimum_edge_session"] / ms["optimum"], 4),
            "max_abs_diff": diff, "export_seconds": {k: round(v, 1) for k, v in seconds.items()}}


def torchao_quantized(module: nn.Module, scheme: str) -> nn.Module:
    """`module` with every Linear quantized by torchao's quantize_ as optimum's --qlinear SCHEME does."""
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

    weights = {"8da8w": (torch.int8, PerAxis(0)), "8da4w": (torch.int4, PerGroup(32))}[scheme]
    quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=weights[0], weight_granularity=weights[1]))
    return module


def torchao_lowered(module: nn.Module, directory: Path, inputs: list[torch.Tensor]):
    """A torchao-quantized module(input_ids, attention_mask) lowered as ExecuTorch's docs lower one (and as
    optimum does): torch.export, to_edge_transform_and_lower with the XNNPACK partitioner; loaded for 1 thread."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    tokens = torch.export.Dim("tokens", min=2, max=512)
    with torch.no_grad():
        ep = torch.export.export(module, tuple(inputs), dynamic_shapes=({1: tokens}, {1: tokens}))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    directory.mkdir()
    (directory / "model.pte").write_bytes(program.buffer)
    return export.RUNTIMES.get("executorch").load(directory, {"forward": "model.pte"}, 1)["forward"]


def executorch_int8_peer(cli: Path, model_dir: Path, model: nn.Module, inputs: list[torch.Tensor], tmp: Path,
                         runs: int, scheme: str, acm: nn.Module | None) -> dict:
    import copy

    import transformers
    from transformers import AutoModelForMaskedLM

    from edge.quant import QuantConfig
    from export.graph import GraphModel

    et = export.RUNTIMES.get("executorch")
    x = [t.numpy() for t in inputs]
    example = dict(zip(("input_ids", "attention_mask"), inputs))
    cases, seconds = {}, {}
    print(f"optimum-cli export executorch --task fill-mask --qlinear {scheme} ...", flush=True)
    group = ["--qlinear_group_size", "32"] if scheme == "8da4w" else []
    pte, why, seconds["optimum_mlm"] = optimum(cli, ["export", "executorch", "-m", str(model_dir), "--task", "fill-mask",
                                                     "--recipe", "xnnpack", "--qlinear", scheme, *group,
                                                     "-o", str(tmp / "optimum_mlm")], tmp / "optimum_mlm", "model.pte")
    if pte is None:
        raise SystemExit(f"peer_optimum.py: optimum-cli could not export the quantized fill-mask model ({why})")
    cases["optimum_mlm"] = et.load(pte.parent, {"forward": pte.name}, 1)["forward"]

    transformers.logging.set_verbosity_error()
    t0 = time.time()
    mlm = torchao_quantized(AutoModelForMaskedLM.from_pretrained(model_dir).eval(), scheme)
    cases["user_mlm"] = torchao_lowered(Logits(mlm), tmp / "user_mlm", inputs)
    seconds["user_mlm"] = time.time() - t0
    t0 = time.time()
    arch, encoder = edge.arch_for(model), torchao_quantized(copy.deepcopy(model), scheme)

    class Plain(nn.Module):  # (the encoder as bench/export_speed.py's user row exports it)
        def forward(self, input_ids, attention_mask):
            return arch.hf_output(encoder, {"input_ids": input_ids, "attention_mask": attention_mask})

    cases["user"] = torchao_lowered(Plain(), tmp / "user", inputs)
    seconds["user"] = time.time() - t0
    quant = lambda m: edge.quantize(m, QuantConfig(scheme))  # noqa: E731
    t0 = time.time()
    dense = export.to_executorch(quant(model), tmp / "dense", example, progress=False)
    cases["dense"] = dense.runner(threads=1)
    seconds["dense"] = time.time() - t0
    sizes = {"optimum_mlm": pte.stat().st_size, "dense": (dense.path / "model.pte").stat().st_size}
    if acm is not None:
        gated = quant(acm)
        graph = GraphModel(gated)
        own = graph.knobs()
        half = {"gate_bias": bias_for_half(graph, inputs, own)}
        t0 = time.time()
        a = export.to_executorch(gated, tmp / "acm", example, progress=False, mode="graph",
                                 levels=[{"name": "acm50", "gate_bias": half["gate_bias"].tolist()}])
        seconds["acm50"] = time.time() - t0
        run, knobs = a.runner(threads=1), [half["gate_bias"].numpy().astype(np.float32)]
        cases["acm50"] = lambda _x, run=run, knobs=knobs: run(_x + knobs)
        sizes["acm50"] = (a.path / "model.pte").stat().st_size
    for name, f in cases.items():
        if not np.isfinite(f(x)[0]).all():
            raise SystemExit(f"peer_optimum.py: {name} returned non-finite values")
    ms = timed(cases, x, runs)
    encoder = ms["optimum_mlm"] - (ms["user_mlm"] - ms["user"])
    return {"scheme": scheme, "ms": ms, "optimum_vs_user_mlm": round(ms["optimum_mlm"] / ms["user_mlm"], 4),
            "dense_int8_vs_optimum_int8": round(ms["dense"] / encoder, 4),
            "acm50_int8_vs_optimum_int8": round(ms["acm50"] / encoder, 4) if "acm50" in ms else None,
            "bytes": sizes, "export_seconds": {k: round(v, 1) for k, v in seconds.items()}}


PEERS = {"executorch": executorch_peer, "onnx": onnx_peer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runtimes", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--quantize", choices=("8da8w", "8da4w"), help="optimum's quantized recipe against edge's int8 "
                    "exports (ExecuTorch only)")
    ap.add_argument("--acm", type=Path, metavar="DIR", help="with --quantize: a converted MiniLM (edge acmize), "
                    "timed in int8 at half its learners")
    args = ap.parse_args()
    if args.quantize and args.runtimes != ["executorch"]:
        raise SystemExit("peer_optimum.py: --quantize compares ExecuTorch exports only; add --runtimes executorch")
    acm = None
    if args.acm:
        try:
            acm = edge.load(args.acm)
        except edge.EdgeError as e:
            raise SystemExit(f"peer_optimum.py: {e}") from None
    for rt in args.runtimes:
        if not CLIS[rt].is_file():
            raise SystemExit(f"peer_optimum.py: no optimum-cli at {CLIS[rt]}; run `bash bench/setup_optimum.sh`")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tok = edge.load_pretrained()
    texts = edge.austen_passages().split("test").texts
    batch = tok([" ".join(texts[:8])], padding="max_length", truncation=True, max_length=args.tokens, return_tensors="pt")
    inputs = [batch["input_ids"], batch["attention_mask"]]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rt in args.runtimes:
            (Path(tmp) / rt).mkdir()
            if args.quantize:
                rows[rt] = executorch_int8_peer(CLIS[rt], edge.pretrained.default_model_dir(), model, inputs,
                                                Path(tmp) / rt, args.runs, args.quantize, acm)
            else:
                rows[rt] = PEERS[rt](CLIS[rt], edge.pretrained.default_model_dir(), model, inputs, Path(tmp) / rt, args.runs)
            print(json.dumps({rt: rows[rt]}), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
