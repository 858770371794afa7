"""edge's ExecuTorch export beside the peer tool, `optimum-cli export executorch` (optimum-executorch
1.1.0, its xnnpack recipe), on the embedded MiniLM: 128 tokens, ExecuTorch's Python runtime, 1 thread,
medians of --runs calls, every case timed in turn (so that the machine's noise falls on all alike):

  optimum_mlm  `optimum-cli export executorch --task fill-mask --recipe xnnpack`: the encoder and a
               masked-LM head (the checkpoint has none, so transformers initializes one; its 30522-way
               projection costs more than the encoder). MiniLM's own task, the sentence embedding
               (--task feature-extraction), is tried first: optimum-executorch 1.1.0 fails on a BERT
               encoder (the line it printed is reported); were it to export, it would be timed as
               "optimum" and compared directly;
  user_mlm     the same AutoModelForMaskedLM through torch.export (its SDPA attention) and XNNPACK, as
               bench/export_speed.py's user row exports: whether that row stands for the peer tool;
  user         the encoder (MiniLM's mean-pooled embedding) exported that way: export_speed's user row;
  dense        edge's dense export of the encoder (export.to_executorch): what export_speed's ratios
               are against.
Figures: optimum_vs_user_mlm = optimum_mlm / user_mlm; dense_vs_user; dense_vs_optimum_encoder =
dense / (optimum_mlm - (user_mlm - user)), the peer's encoder with the head's time of the user pair
taken off (an estimate: the head is lowered alike in both); the export times.

    bash bench/setup_optimum.sh                       # once: optimum-executorch in .venv-optimum (its pins
                                                      # conflict with edge's; ~1.5 min)
    taskset -c 0 .venv/bin/python bench/peer_optimum.py     # ~3 minutes
Last line: one JSON object.
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
from export_speed import interleaved, lowered, user_dense  # noqa: E402

OPTIMUM_CLI = Path(__file__).resolve().parent.parent / ".venv-optimum" / "bin" / "optimum-cli"


def optimum_export(cli: Path, model_dir: Path, task: str, out: Path) -> tuple[Path | None, str, float]:
    """(the .pte or None, what went wrong, seconds): optimum-cli as a user runs it, offline."""
    t0 = time.time()
    done = subprocess.run([str(cli), "export", "executorch", "-m", str(model_dir), "--task", task,
                           "--recipe", "xnnpack", "-o", str(out)],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.time() - t0
    pte = out / "model.pte"
    if done.returncode == 0 and pte.is_file():
        return pte, "", seconds
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(" ")]
    return None, (lines or [f"exit {done.returncode}"])[-1][:200], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--optimum-cli", type=Path, default=OPTIMUM_CLI)
    args = ap.parse_args()
    if not args.optimum_cli.is_file():
        raise SystemExit(f"peer_optimum.py: no optimum-cli at {args.optimum_cli}; run `bash bench/setup_optimum.sh` "
                         "(or pass --optimum-cli PATH)")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    import transformers
    from transformers import AutoModelForMaskedLM

    model_dir = edge.pretrained.default_model_dir()
    model, tok = edge.load_pretrained()
    texts = edge.austen_passages().split("test").texts
    batch = tok([" ".join(texts[:8])], padding="max_length", truncation=True, max_length=args.tokens, return_tensors="pt")
    inputs = [batch["input_ids"], batch["attention_mask"]]
    x = [t.numpy() for t in inputs]
    et = export.RUNTIMES.get("executorch")

    class Logits(nn.Module):
        def __init__(self, mlm: nn.Module):
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask):
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits

    cases, seconds, failed = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task, name in (("feature-extraction", "optimum"), ("fill-mask", "optimum_mlm")):
            print(f"optimum-cli export executorch --task {task} ...", flush=True)
            pte, why, seconds[name] = optimum_export(args.optimum_cli, model_dir, task, tmp / name)
            if pte is None:
                failed[task] = why
                print(f"  failed: {why}", flush=True)
                continue
            cases[name] = et.load(pte.parent, {"forward": pte.name}, 1)["forward"]
            out = cases[name](x)[0]
            if not np.isfinite(out).all():
                raise SystemExit(f"peer_optimum.py: optimum's {task} program returned non-finite values")
        if "optimum_mlm" not in cases:
            raise SystemExit(f"peer_optimum.py: optimum-cli could not export the fill-mask model ({failed['fill-mask']})")
        t0 = time.time()
        transformers.logging.set_verbosity_error()  # (its table of the head's newly initialized weights)
        mlm = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
        cases["user_mlm"] = lowered(Logits(mlm), "executorch", tmp / "user_mlm", inputs)
        seconds["user_mlm"] = time.time() - t0
        t0 = time.time()
        cases["user"] = user_dense(model, "executorch", tmp / "user", inputs)
        seconds["user"] = time.time() - t0
        t0 = time.time()
        dense = export.to_executorch(model, tmp / "dense", {"input_ids": inputs[0], "attention_mask": inputs[1]},
                                     progress=False)
        seconds["dense"] = time.time() - t0
        cases["dense"] = dense.runner(threads=1)
        print("timing " + ", ".join(cases), flush=True)
        ms = interleaved({name: (lambda f=f: f(x)) for name, f in cases.items()}, args.runs)
    head = ms["user_mlm"] - ms["user"]
    row = {"ms": {k: round(v, 3) for k, v in ms.items()},
           "optimum_vs_user_mlm": round(ms["optimum_mlm"] / ms["user_mlm"], 4),
           "dense_vs_user": round(ms["dense"] / ms["user"], 4),
           "dense_vs_optimum_encoder": round(ms["dense"] / (ms["optimum_mlm"] - head), 4),
           "dense_vs_optimum": round(ms["dense"] / ms["optimum"], 4) if "optimum" in ms else None,
           "optimum_failed": failed, "export_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
