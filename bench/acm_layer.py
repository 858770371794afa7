"""One ACM layer on ExecuTorch (XNNPACK, 1 thread), without the rest of the model: how the routed
mode's "group" form (export.routed.Units: one method holding all N learners, input j the tokens of
learner j: one call per ACM) compares with the dense FFN, with one method per learner (one call each,
the routed mode before plan version 3; the same weights; "method": the group's call alone, on inputs
gathered beforehand, i.e. without the Python driver's numpy work)
and with a "prefix" form (one method per k that holds the first k learners as one FFN: fewer, wider
GEMMs, but 2.5x the FFN weights for N = 4).
MiniLM's sizes (d 384, F 1536, N 4, 128 tokens), random weights; for several distributions of k over
the tokens, medians of --runs interleaved calls, as ratios to the dense FFN.
Called again and again, one layer's weights (4.7 MB) stay in the CPU's caches; in a whole model they
do not (MiniLM's layers hold 42 MB; a phone's caches are smaller still). With --cold MB every call
first reads MB megabytes of other data, so the weights come from memory, as in a model (the time of
that read alone, timed as its own case, is taken off every case). With --int8 every form is
XNNPACK's dynamically quantized int8 GEMMs instead (export.executorch.dynamic_int8; the dense FFN
too): a quarter of the weight bytes. With --rows the dense FFN and the group (every learner on the
same rows) are timed on 1..128 tokens instead: what a call costs whatever the tokens (the weights
streamed through the caches) and what each token adds; the last line then gives the floor that cost
puts under the ratio at half the learners (no gate, no routing counted).

    taskset -c 0 .venv/bin/python bench/acm_layer.py             # about 2 minutes
    taskset -c 0 .venv/bin/python bench/acm_layer.py --cold 512  # weights from memory; about 6 minutes
    taskset -c 0 .venv/bin/python bench/acm_layer.py --int8      # int8 weights; about a minute
    taskset -c 0 .venv/bin/python bench/acm_layer.py --rows      # cost against tokens; about a minute
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from device.executorch import load
from export.executorch import dynamic_int8, lower
from device.driver import run_learners
from export.routed import Units
from export_speed import interleaved  # (bench/ is the script's directory)

D, F, N, T = 384, 1536, 4, 128
H = F // N


class Ffn(nn.Module):
    """Hidden units lo..hi of one FFN (the dense FFN, a learner, or a prefix of learners)."""

    def __init__(self, w: tuple, lo: int, hi: int):
        super().__init__()
        w1, b1, w2, b2 = w
        self.up, self.down, self.act = nn.Linear(D, hi - lo), nn.Linear(hi - lo, D), nn.GELU()
        with torch.no_grad():
            self.up.weight.copy_(w1[lo:hi])
            self.up.bias.copy_(b1[lo:hi])
            self.down.weight.copy_(w2[:, lo:hi])
            self.down.bias.copy_(b2 if lo == 0 else torch.zeros(D))

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--cold", type=int, default=0, metavar="MB",
                    help="read MB megabytes of other data before every call (more than the CPU's last-level cache)")
    ap.add_argument("--int8", action="store_true", help="every form with int8 weights (dynamic quantization)")
    ap.add_argument("--rows", action="store_true", help="time dense and group on 1..128 tokens (cost against tokens)")
    args = ap.parse_args()
    if args.cold < 0:
        ap.error("--cold takes megabytes >= 0")
    torch.manual_seed(0)
    w = (torch.randn(F, D) / 20, torch.randn(F) / 20, torch.randn(D, F) / 40, torch.randn(D) / 20)
    mods = {"dense": Ffn(w, 0, F), **{f"learner{j}": Ffn(w, j * H, (j + 1) * H) for j in range(N)},
            **{f"prefix{k}": Ffn(w, 0, k * H) for k in range(1, N + 1)}}
    def fp32(mod, x, dynamic):
        return torch.export.export(mod, x, dynamic_shapes=dynamic)

    trace = dynamic_int8 if args.int8 else fp32
    m = torch.export.Dim("m", min=1, max=T)
    eps = {n: trace(mod, (torch.randn(8, D),), ({0: m},)) for n, mod in mods.items()}
    ms = [torch.export.Dim(f"m{j}", min=1, max=T) for j in range(N)]
    if args.int8:  # the fp32 dense FFN too, timed beside the rest: what int8 alone gives
        eps["dense_fp32"] = fp32(mods["dense"], (torch.randn(8, D),), ({0: m},))
    eps["group"] = trace(Units([mods[f"learner{j}"] for j in range(N)]), tuple(torch.randn(8 - j, D) for j in range(N)),
                         {"xs": tuple({0: d} for d in ms)})
    tmp = Path(tempfile.mkdtemp())
    runs = load(tmp, lower(eps, tmp, False), threads=1)
    x = np.random.default_rng(0).standard_normal((T, D)).astype(np.float32)

    def learners(k):  # one call per learner (the routed driver before plan version 3)
        order = np.argsort(-k, kind="stable")
        xs, ys = x[order], np.zeros_like(x)
        for j in range(N):
            c = int(np.count_nonzero(k > j))
            if c:
                ys[:c] += runs[f"learner{j}"]([xs[:c]])[0]
        y = np.empty_like(x)
        y[order] = ys
        return y

    def group(k):  # what the routed driver does: one call, learner j's tokens a prefix of the sorted tokens
        return run_learners(x, k, "group", N, lambda m, a: runs[m](a))

    def prefix(k):  # the tokens of each k through prefix k, once
        order = np.argsort(-k, kind="stable")
        xs, ys = x[order], np.zeros_like(x)
        start = 0
        for kk in range(N, 0, -1):
            c = int(np.count_nonzero(k == kk))
            if c:
                ys[start:start + c] = runs[f"prefix{kk}"]([xs[start:start + c]])[0]
                start += c
        y = np.empty_like(x)
        y[order] = ys
        return y

    other = np.ones(args.cold << 18, dtype=np.float32)  # --cold MB of float32

    def cold(f):  # other.sum() reads it all, evicting the weights from the caches (nothing to do without --cold)
        return (lambda: (other.sum(), f())) if args.cold else f

    if args.rows:
        return by_rows(runs, x, args.runs)
    rng = np.random.default_rng(0)
    dists = {"open (k=4)": np.full(T, 4), "all k=2": np.full(T, 2), "uniform 0..4": rng.integers(0, 5, T),
             "bimodal 0|4": rng.choice([0, 4], T), "1|3": rng.choice([1, 3], T)}
    result = {"int8": args.int8, "dist": [], "mean_k": [], "dense_ms": [], "learners_ratio": [], "group_ratio": [],
              "method_ratio": [], "prefix_ratio": [],
              **({"dense_vs_fp32_dense": []} if args.int8 else {})}
    for name, k in dists.items():
        tol = 0.1 if args.int8 else 1e-4  # (int8: each form quantizes its own inputs, on their own range; outputs ~3)
        assert np.allclose(learners(k), prefix(k), atol=tol) and np.allclose(learners(k), group(k), atol=tol)
        gathered = []  # the group method's inputs, as the driver gathers them
        run_learners(x, k, "group", N, lambda method, inputs: gathered.extend(inputs) or runs[method](inputs))
        cases = {"read": lambda: None, "dense": lambda: runs["dense"]([x]), "learners": lambda: learners(k),
                 "group": lambda: group(k), "prefix": lambda: prefix(k), "method": lambda: runs["group"](gathered),
                 **({"dense_fp32": lambda: runs["dense_fp32"]([x])} if args.int8 else {})}
        md = interleaved({case: cold(f) for case, f in cases.items()}, args.runs)
        md = {case: v - md["read"] for case, v in md.items()}
        print(f"{name:14s} mean k {k.mean():.2f}  dense {md['dense']:.3f} ms  learners {md['learners'] / md['dense']:.3f}x  "
              f"group {md['group'] / md['dense']:.3f}x  (method {md['method'] / md['dense']:.3f}x)  prefix {md['prefix'] / md['dense']:.3f}x", flush=True)
        for key, v in (("dist", name), ("mean_k", round(float(k.mean()), 2)), ("dense_ms", round(md["dense"], 3)),
                       ("learners_ratio", round(md["learners"] / md["dense"], 3)),
                       ("group_ratio", round(md["group"] / md["dense"], 3)),
                       ("method_ratio", round(md["method"] / md["dense"], 3)),
                       ("prefix_ratio", round(md["prefix"] / md["dense"], 3)),
                       *((("dense_vs_fp32_dense", round(md["dense"] / md["dense_fp32"], 3)),) if args.int8 else ())):
            result[key].append(v)
    print(json.dumps(result))


def by_rows(runs: dict, x: np.ndarray, n: int) -> None:
    """Dense FFN and group (all N learners on the same m rows) on m = 1..T rows, interleaved. A call's
    time is about a + b * m: `a` (m = 1) is what the call costs whatever the tokens (the layer's weights,
    4.7 MB, streamed from the caches it does not fit; the call itself). Half the learners on every token
    then cost (a + (t(T) - a) / 2) / t(T) of the dense FFN at best."""
    sizes = [1, 4, 16, 32, 64, 96, T]
    cases = {f"{form} {m}": (lambda f=runs[form], a=[x[:m]] * (N if form == "group" else 1): f(a))
             for m in sizes for form in ("dense", "group")}
    md = interleaved(cases, n)
    for m in sizes:
        print(f"{m:4d} tokens  dense {md[f'dense {m}']:.3f} ms  group {md[f'group {m}']:.3f} ms", flush=True)
    dense = {m: md[f"dense {m}"] for m in sizes}
    group = {m: md[f"group {m}"] for m in sizes}
    print(json.dumps({"tokens": sizes, "dense_ms": [round(v, 4) for v in dense.values()],
                      "group_ms": [round(v, 4) for v in group.values()],
                      "fixed_share_dense": round(dense[1] / dense[T], 3), "fixed_share_group": round(group[1] / dense[T], 3),
                      "half_floor": round((group[1] + (group[T] - group[1]) / 2) / dense[T], 3)}))


if __name__ == "__main__":
    main()
