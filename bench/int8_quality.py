"""What int8 quantization (edge.quant) costs in quality, on real held-out text: the converted MiniLM (from
`edge acmize` or `edge demo`, at its budget) against itself in fp32, and the dense MiniLM quantized the
same way against the original, on the whole test split of the Jane Austen passages.

For each scheme (8da8w, 8da4w) and cover (the default: backbone, learners, task head; and "all": the
gates, exits and routers too):
  cos_mean, cos_p5   the quantized model's embedding against the same model's fp32 embedding;
  acc, acc_fp32      the novel-task accuracy of a linear probe fitted on the ORIGINAL model's embeddings
                     (applied unchanged), quantized and fp32;
  ffn_fraction       the ACM model's achieved FFN compute (its gates see the quantized activations).
Acceptance (issue 36): 8da8w ACM model cos_mean >= 0.995 and accuracy within 0.5 point of fp32.

    .venv/bin/python bench/int8_quality.py --acm out/minilm-acm      # about 15 minutes on 1 core
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import edge
from edge.evaluate import outputs, teacher_probe
from edge.quant import COVER, SCHEMES, QuantConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--acm", required=True, help="a converted MiniLM (edge acmize / edge demo: out/minilm-acm)")
    ap.add_argument("--limit", type=int, default=None, help="test passages (default: the whole test split)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    args = ap.parse_args()
    torch.manual_seed(0)
    try:
        acm = edge.load(args.acm)
    except edge.EdgeError as e:
        raise SystemExit(f"int8_quality.py: {e}") from None
    original, tok = edge.load_pretrained()
    passages = edge.austen_passages()
    test = passages.split("test")
    test = test.head(args.limit) if args.limit else test
    test_b = edge.batches(tok, test.texts, 64)
    y = torch.tensor(test.labels)
    probe = teacher_probe(original, tok, passages)
    fp32 = {"acm": outputs(acm, test_b), "dense": outputs(original, test_b)}
    rows = []
    for scheme in args.schemes:
        for cover in ("default", "all"):
            config = QuantConfig(scheme, cover=COVER if cover == "all" else QuantConfig().cover)
            for name, model in (("acm", acm), ("dense", original)):
                if name == "dense" and cover == "all":
                    continue  # (the dense model has no decisions)
                t0 = time.time()
                out, meter = outputs(edge.quantize(model, config), test_b)
                ref, ref_meter = fp32[name]
                cos = F.cosine_similarity(out, ref, dim=-1)
                row = {"model": name, "scheme": scheme, "cover": cover, "cos_mean": round(float(cos.mean()), 5),
                       "cos_p5": round(float(torch.quantile(cos, 0.05)), 5), "acc": round(probe.accuracy(out, y), 4),
                       "acc_fp32": round(probe.accuracy(ref, y), 4),
                       "ffn_fraction": round(meter.ffn_fraction(), 4) if meter else None,
                       "ffn_fraction_fp32": round(ref_meter.ffn_fraction(), 4) if ref_meter else None,
                       "seconds": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(json.dumps({k: [r[k] for r in rows] for k in rows[0]} | {"passages": len(test.texts)}))


if __name__ == "__main__":
    main()
