"""Are the gates or the learners what keeps the ACM's cosine at budget 0.5 down? The learned gates
against an oracle gate that knows, for every token, each prefix's true squared error against the
original FFN's output on the same input (normalized by a fixed per-layer variance: the error gate's
own target), both calibrated to budget 0.5 the same way (every layer at 0.5, bisection of the gate
bias), scored on held-out Austen passages; after phases 1+2 and again after phase 3 (defaults).
The oracle allocates by each layer's local error, as phase 2 teaches the gates to; phase 3 trains
them for the final output instead.

    .venv/bin/python bench/acm_oracle.py     # about 15 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

import torch

import edge
from acm_choices import austen, static_cosines  # (bench/ is the script's directory)
from edge.acm import ACTIVATIONS
from edge.budget import calibrate_budget_
from edge.convert import prefix_errors
from edge.evaluate import compare


@contextmanager
def oracle_gates(acm_model, original):
    """Every ACM's gate scores replaced by minus its prefixes' true errors (M, N+1) against the
    original model's FFN of the same layer; the gate biases are given back afterwards."""
    arch = edge.arch_for(original)
    ffns = [arch.ffn(layer, original.config) for layer in arch.layers(original)]
    acms = edge.acm_modules(acm_model)
    biases = [a.gate_bias.clone() for a in acms]
    for a, f in zip(acms, ffns):
        act = ACTIVATIONS.get(f.act)()
        var = {}

        def oracle(x, a=a, f=f, act=act, var=var):
            x2 = x.reshape(-1, a.d)
            y = f.fc2(act(f.fc1(x2)))
            var.setdefault("y", y.var())  # the first call: calibration's, on real tokens only
            return (-prefix_errors(a, x2, y) / var["y"]).reshape(*x.shape[:-1], a.n + 1)

        a.gate_logits = oracle  # (an instance attribute over the method)
    try:
        yield
    finally:
        for a, b in zip(acms, biases):
            del a.gate_logits
            a.gate_bias.copy_(b)


def main():
    model, train, calib, test, teacher_out = austen(768)
    p2 = edge.acmize(model, edge.AcmConfig(budget=0.5), train, calib, edge.DistillConfig(e2e_steps=0), progress=False)
    p3 = edge.retarget(p2, model, 0.5, train, calib, edge.DistillConfig(), progress=False)
    result = {}
    for name, acm in (("phases 1+2", p2), ("phase 3", p3)):
        rep, _ = compare(acm, teacher_out, test)
        row = {"gate_cos": round(rep["cos_mean"], 4), "gate_p5": round(rep["cos_p5"], 4),
               "gate_achieved": round(rep["ffn_fraction"], 4)}
        with torch.no_grad(), oracle_gates(acm, model):
            calibrate_budget_(acm, calib, 0.5)
            rep, _ = compare(acm, teacher_out, test)
        row.update(oracle_cos=round(rep["cos_mean"], 4), oracle_p5=round(rep["cos_p5"], 4),
                   oracle_achieved=round(rep["ffn_fraction"], 4),
                   cos_static_k=[round(c, 4) for c in static_cosines(acm, teacher_out, test)])
        result[name] = row
        print(name, json.dumps(row), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
