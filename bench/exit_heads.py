"""How much of MiniLM's final embedding an exit can recover, per layer (issue 3's MiniLM figures).

For exits after layers 1..5: the product's exit head (edge.add_exits: least squares from the mean-pooled
hidden state to the final embedding) and, beside it, the same closed-form fit from richer pooled
statistics of the same layer (mean, mean of squares and max over the tokens: 3x the features, a few
FLOPs a token). Scored on the first held-out Austen passages: the mean cosine to the original model's
embedding, and the accuracy of the novel probe (fitted on the original's embeddings) applied unchanged.

    .venv/bin/python bench/exit_heads.py        # about 5 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

import edge
from edge.depth import fit_linear_
from edge.forward import run
from edge.evaluate import teacher_probe

AFTER = (1, 2, 3, 4, 5)


def pooled_stats(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """(layers, N, 3d): per layer and passage, the mean, mean of squares and max of the hidden state
    over the real tokens."""
    out = []
    with torch.no_grad():
        for b in batches:
            hs = model(**b, output_hidden_states=True).hidden_states[1:]  # after each layer
            m = b["attention_mask"][None, :, :, None].float()  # (1, B, T, 1)
            h, n = torch.stack(hs), m.sum(2)
            out.append(torch.cat([(h * m).sum(2) / n, (h * h * m).sum(2) / n, (h + (m - 1) * 1e4).amax(2)], -1))
    return torch.cat(out, 1)


def with_exits(n_train: int):
    """MiniLM, the passages, the novel probe, the exit heads' n_train training passages (batches) and
    MiniLM with the product's exit heads after AFTER trained on them (also bench/exit_policies.py)."""
    torch.manual_seed(0)
    model, tok = edge.load_pretrained()
    p = edge.austen_passages()
    probe = teacher_probe(model, tok, p)
    train = edge.batches(tok, p.split("train").texts[:n_train], 32)
    heads = edge.add_exits(model, edge.ExitConfig(after=list(AFTER), steps=len(train)), train, progress=False)
    return model, tok, p, probe, train, heads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=4800, help="training passages (the exit heads' data)")
    ap.add_argument("--test", type=int, default=1024, help="held-out passages scored")
    args = ap.parse_args()
    model, tok, p, probe, train, heads = with_exits(args.train)
    test_p = p.split("test").head(args.test)
    test, y = edge.batches(tok, test_p.texts, 64), torch.tensor(test_p.labels)
    arch = edge.arch_for(model)
    with torch.no_grad():
        final_train = torch.cat([arch.output(model, b) for b in train])
        final = torch.cat([arch.output(model, b) for b in test])
    score = lambda out: (round(float(F.cosine_similarity(out, final).mean()), 4),  # noqa: E731
                         round(probe.accuracy(out, y), 4))

    with torch.no_grad():
        passes = [run(heads, b, exits=False, collect=True)[1] for b in test]
    stats_train, stats_test = pooled_stats(model, train), pooled_stats(model, test)
    result = {"layer": list(AFTER), "head_cos": [], "head_acc": [], "rich_cos": [], "rich_acc": []}
    for a in AFTER:
        cos, acc = score(torch.cat([t.exits[a][0] for t in passes]))
        rich = nn.Linear(stats_train.shape[-1], final.shape[-1])
        with torch.no_grad():
            fit_linear_(rich, stats_train[a - 1], final_train)
            rcos, racc = score(rich(stats_test[a - 1]))
        for k, v in zip(("head_cos", "head_acc", "rich_cos", "rich_acc"), (cos, acc, rcos, racc)):
            result[k].append(v)
        print(f"exit after {a}: head cos {cos:.4f} acc {acc:.4f} | richer pooling cos {rcos:.4f} acc {racc:.4f}", flush=True)
    result["acc_full"] = score(final)[1]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
