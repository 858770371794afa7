"""Eager PyTorch inference of a converted model: does the skipping forward save time? A converted
MiniLM (edge demo writes one to out/minilm-acm) at its own budget and with every gate open, against
the original model, in two forms of the skipping forward:

  learners  edge's (edge.ACM._forward_skipping): tokens sorted by k once, learner j runs on the first
            m_j rows (the tokens with k > j); every learner's weights are read once;
  prefix    edge's before 2026-12-01: one FFN of width k*h per group of tokens with equal k (fewer,
            wider GEMMs, but the first learners' weights are read once per group: 2.5x the FFN's for N = 4).

Batches of real held-out passages (batch 1: ~50 tokens; batch 16), every model timed in turn on each
batch, medians as ratios to the original. 1 thread.

    taskset -c 0 .venv/bin/python bench/acm_eager.py [--acm out/minilm-acm]     # about 2 minutes
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

import edge
from edge.acm import acm_modules


def prefix_form(acm, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The first k learners as one FFN of width k*h, per group of tokens that chose k."""
    shape, d, h = x.shape, acm.d, acm.h
    x, k = x.reshape(-1, d), k.reshape(-1)
    y = x.new_zeros(x.shape)
    for kk in range(1, acm.n + 1):
        idx = torch.nonzero(k == kk).reshape(-1)
        if len(idx) and acm.exact_top and kk == acm.n:  # the original FFN
            y[idx] = acm.top(x[idx])
        elif len(idx):
            a = acm.act(F.linear(x[idx], acm.w1.view(-1, d)[:kk * h], acm.b1.view(-1)[:kk * h]))
            y[idx] = a @ acm.w2.view(-1, d)[:kk * h] + acm.b2[:kk].sum(0)
    return y.reshape(shape)


def variant(model, form: str, open_: bool):
    model = copy.deepcopy(model)
    for acm in acm_modules(model):
        if form == "prefix":
            acm._forward_skipping = prefix_form.__get__(acm)
        if open_:
            acm.gate_bias.fill_(-1e4)  # every token runs every learner
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acm", default="out/minilm-acm", help="a converted MiniLM (edge demo / edge acmize output)")
    ap.add_argument("--passages", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        acm = edge.load(args.acm)
    except edge.EdgeError as e:
        raise SystemExit(f"acm_eager.py: {e} (edge demo writes a converted MiniLM to out/minilm-acm)") from None
    model, tok = edge.load_pretrained()
    arch = edge.arch_for(model)
    texts = edge.austen_passages().split("test").texts[:args.passages]
    models = {"original": model, **{f"{form}@{at}": variant(acm, form, at == "open")
                                    for form in ("learners", "prefix") for at in ("budget", "open")}}
    figures = {}
    for batch in (1, 16):
        batches = edge.batches(tok, texts, batch)
        with torch.no_grad():
            ref = arch.output(models["learners@budget"], batches[0])
            diff = float((arch.output(models["prefix@budget"], batches[0]) - ref).abs().max())
            ms = {name: [] for name in models}
            for _ in range(args.repeats):
                for name, m in models.items():  # in turn, each on every batch: a model runs warm, as it does in use
                    arch.output(m, batches[-1])
                    for b in batches:
                        t0 = time.perf_counter()
                        arch.output(m, b)
                        ms[name].append((time.perf_counter() - t0) * 1e3)
        med = {name: statistics.median(v) for name, v in ms.items()}
        ratios = {name: round(v / med["original"], 3) for name, v in med.items() if name != "original"}
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
        print(f"batch {batch} (~{tokens:.0f} real tokens a batch): original {med['original']:.2f} ms; "
              + ", ".join(f"{n} {r:.3f}x" for n, r in ratios.items()) + f"  (forms differ by {diff:.1e})", flush=True)
        figures[f"batch{batch}"] = {**ratios, "speedup_budget_vs_open": round(med["learners@open"] / med["learners@budget"], 3),
                                    "prefix_speedup_budget_vs_open": round(med["prefix@open"] / med["prefix@budget"], 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
