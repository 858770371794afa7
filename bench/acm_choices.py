"""Which learner initialization and which gate, measured side by side in one run.

Each variant runs phases 1 and 2 with the same steps and data, is calibrated to budget 0.5, and is
scored on held-out Austen passages (cosine of the sentence embedding to the original MiniLM's),
adaptive and static (every token k = 1..N).

    .venv/bin/python bench/acm_choices.py             # about 8 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import json

import torch

import edge
from edge.parts import parts
from edge.evaluate import compare, outputs

VARIANTS = {"slices+error": dict(init="slices", gate="error"),
            "random+error": dict(init="random", gate="error"),
            "slices+ratio": dict(init="slices", gate="ratio")}


def austen(test_passages: int):
    """MiniLM, Austen batches for training (32 passages) and calibration (512), the first
    `test_passages` held-out passages and the original model's embeddings of them."""
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    p = edge.austen_passages()
    train = edge.batches(tok, p.split("train").texts, 32)
    calib = edge.batches(tok, p.split("calib").texts[:512], 64)
    test = edge.batches(tok, p.split("test").texts[:test_passages], 64)
    return model, train, calib, test, outputs(model, test)[0]


def static_cosines(acm, teacher_out, test) -> list[float]:
    """Mean cosine to the original's outputs with every token at k = 1..N learners (the static
    baseline of each width); the gates choose again afterwards."""
    cos = []
    for k in range(1, parts(acm).config('acm').learners + 1):
        for a in edge.acm_modules(acm):
            a.forced_k = k
        cos.append(compare(acm, teacher_out, test)[0]["cos_mean"])
    for a in edge.acm_modules(acm):
        a.forced_k = None
    return cos


def main():
    model, train, calib, test, teacher_out = austen(512)
    distill = edge.DistillConfig(repr_steps=100, gate_steps=50, e2e_steps=0)
    result = {}
    for name, kw in VARIANTS.items():
        acm = edge.acmize(model, edge.AcmConfig(budget=0.5, **kw), train, calib, distill, progress=False)
        rep, _ = compare(acm, teacher_out, test)
        result[name] = {"cos_adaptive_at_0.5": rep["cos_mean"], "achieved": rep["ffn_fraction"],
                        "cos_static_k": static_cosines(acm, teacher_out, test)}
        print(name, json.dumps(result[name]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
