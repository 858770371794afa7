"""The plan driver of the routed mode: runs an artifact's segments and takes the decisions between
them (skip an attention, the learners an ACM runs, the experts a MoE runs, leave at an exit) with numpy
and nothing else, in
a loop simple enough to port (profiler/runner/edge_runner.cpp and android_demo's Plan/Driver are its
ports, checked against it on shared vectors). export.routed cuts a model into the segments it runs.

A segment's "then" names its decision; OUTPUTS: the outputs each decision reads."""
from __future__ import annotations

import numpy as np

OUTPUTS = {"skip": ["score"], "acm": ["x", "k"], "moe": ["x", "k"], "exit": ["exit_output", "conf"], "end": ["output"]}
KNOB_ROWS = ("gate_bias", "experts")  # a gate's knob input: its layer's row, the decision's index under its kind


def run_learners(x: np.ndarray, k: np.ndarray, method: str, n: int, call, top: bool = False) -> np.ndarray:
    """An ACM's output on tokens x (T, d) that chose k (T,): piece j runs on the tokens with k > j,
    its output added; with `top` (the ACM's exact top: piece n-1 is the original FFN) a token with
    k = n runs piece n-1 alone. One call of `method` (the ACM's n pieces) on spans of the tokens sorted
    by k, most first: piece j's rows are [start_j, counts[j]), start_j = 0, or the top's tokens with
    `top` and j < n-1 (edge.acm.spans); a piece no token needs gets one row to run on (a method's input
    has at least one), which is dropped; no call at all when no token runs a piece."""
    counts = [int(np.count_nonzero(k > j)) for j in range(n)]
    first = counts[-1] if top else 0
    spans = [(first if j < n - 1 else 0, c) for j, c in enumerate(counts)]
    y = np.zeros_like(x)  # zero for the tokens that run no learner
    if m := counts[0]:
        order = np.argsort(-k, kind="stable")[:m]  # the m tokens that run any, most learners first
        xs = x[order]
        outs = call(method, [xs[a:b] if b > a else xs[:1] for a, b in spans])
        ys = np.zeros_like(xs)
        for (a, b), out in zip(spans, outs):
            ys[a:b] += out[:b - a]
        y[order] = ys
    return y


def run_experts(x: np.ndarray, k: np.ndarray, method: str, n: int, call) -> np.ndarray:
    """A MoE's experts' outputs summed on tokens x (T, d) whose routes k (T,) are bit masks: expert e runs
    on the tokens with bit e set, in their order. One call of `method` (the n experts); an expert no
    token needs gets one row to run on (a method's input has at least one), which is dropped; no call at
    all when no token runs an expert."""
    y = np.zeros_like(x)  # zero for the tokens that run no expert
    rows = [np.flatnonzero((k >> e) & 1) for e in range(n)]
    if any(len(r) for r in rows):
        outs = call(method, [x[r] if len(r) else x[:1] for r in rows])
        for r, out in zip(rows, outs):
            y[r] += out[:len(r)]
    return y


def drive(section: dict, layers: int, call, inputs: dict[str, np.ndarray], knobs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a routed plan: `call(method, arrays) -> arrays` runs one method of the program. Returns
    [output, exit_layer (1,), skipped (layers,), ks (A, T)] (ks only when the model has adaptive FFNs:
    section["acms"] counts them, ACMs or MoEs)."""
    values = dict(inputs)
    segments = section["segments"]
    exit_layer, skipped, ks = layers, np.zeros(layers, dtype=np.bool_), None
    s = 0
    while True:
        seg, then = segments[s], segments[s]["then"]
        kind = then["kind"]
        feeds = [knobs[n][then[kind]:then[kind] + 1] if n in KNOB_ROWS else values[n] for n in seg["inputs"]]
        values.update(zip(seg["outputs"], call(seg["method"], feeds)))
        if kind == "end":
            output = values["output"]
            break
        if kind == "exit":
            if values["conf"][0] >= knobs["exit_thresholds"][then["exit"]]:
                output, exit_layer = values["exit_output"], then["layer"]
                break
            s = then["next"]
        elif kind == "skip":
            keep = values["score"][0] >= knobs["skip_thresholds"][then["router"]]
            skipped[then["layer"] - 1] = not keep
            s = then["keep"] if keep else then["skip"]
        else:  # "acm": learner j runs on the tokens that chose more than j learners; "moe": expert e on
            # the tokens with bit e; their outputs added
            x, k = values["x"], values["k"]
            if kind == "acm":
                values["y"] = run_learners(x, k, then["learners"], then["n"], call, then["top"])[None]
            else:
                values["y"] = run_experts(x, k, then["experts"], then["n"], call)[None]
            if ks is None:
                ks = np.full((section["acms"], len(k)), -1, dtype=np.int64)
            ks[then[kind]] = k
            s = then["next"]
    out = [output, np.array([exit_layer], dtype=np.int64), skipped]
    if section["acms"] and ks is None:  # no adaptive FFN was reached: every row is -1
        ks = np.full((section["acms"], values["h"].shape[1]), -1, dtype=np.int64)
    return out + [ks] if section["acms"] else out
