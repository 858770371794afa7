"""Which passages should leave MiniLM early, and could any rule pick them (issue 3's MiniLM figures)?

The product's exit heads after layers 1..5 (edge.add_exits), one full pass per passage, then rules that
choose each passage's exit layer, side by side, on the held-out Austen passages, scored by the novel
probe (fitted on the original's embeddings, applied unchanged) and the FLOPs spent (edge's accounting,
heads included):

  learned      the product's rule: leave at the first exit whose confidence (a small MLP predicting the
               cosine of the exit's output to the final embedding) is >= t;
  patience     leave at the first exit (after the second) whose output's cosine to the previous exit's
               output is >= t: two consecutive exits agree (known at run time, no training);
  task head    leave at the first exit where the novel probe, applied to the exit's output, is sure:
               its largest class probability >= t (a classifier's confidence, where the deployed model
               is MiniLM + this task's head);
  exit classifiers  leave at the first exit whose own linear classifier (fitted like the probe, on the
               same passages, from that layer's pooled state) has its largest class probability >= t,
               and answer with its prediction (a classifier with exits, for this task only);
  distilled classifiers  the same from classifiers fitted without labels, as edge fits a classifier's
               exit heads (least squares from the LayerNorm of the pooled state to the final logits,
               on the exit heads' passages), the final logits being the novel probe's;
  oracle cos   leave at the first exit whose output's TRUE cosine to the final embedding is >= t: the
               best any cosine-predicting confidence could do (not known at run time);
  oracle task  leave at the first exit whose probe prediction equals the full model's: the best any
               rule could do on this task (the full model's accuracy at the least compute; not known at
               run time).

For each rule: the least FLOPs fraction at which the accuracy is within 1 point of the full model's,
with t chosen on the calibration passages and scored on the test passages (the rule's honest figure),
and the same read off the test passages themselves (its best case). Issue 3's target: <= 0.7.

    .venv/bin/python bench/exit_policies.py        # about 4 minutes on 2 cores
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import edge
from edge.depth import fit_linear_
from edge.exits import exit_heads
from edge.forward import run
from edge.evaluate import LinearProbe

sys.path.insert(0, str(Path(__file__).parent))
from exit_heads import AFTER, with_exits  # noqa: E402

RULES = ("learned", "patience", "task head", "exit classifiers", "distilled classifiers", "oracle cos", "oracle task")
GRID = 200  # thresholds per rule (quantiles of its scores)


def passes(model, batches: list[dict], probe: LinearProbe) -> dict:
    """Per passage: every exit's output (E, N, D), confidence (E, N) and pooled state (E, N, d), the
    FLOPs of leaving at each exit (E, N) and of the full path (N,), the final embedding (N, D) and
    the probe's answer on it (N,)."""
    heads = exit_heads(model)
    cost = torch.cumsum(torch.tensor([float(heads[a].flops()) for a in AFTER]), 0)  # the heads passed on the way
    ys, confs, pooled, flops, full, final = [], [], [], [], [], []
    with torch.no_grad():
        for b in batches:
            out, t = run(model, b, exits=False, collect=True)
            ys.append(torch.stack([t.exits[a][0] for a in AFTER]))
            confs.append(torch.stack([t.exits[a][1] for a in AFTER]))
            pooled.append(torch.stack([t.pooled[a - 1] for a in AFTER]))
            flops.append(torch.stack([t.layer_flops[a - 1] for a in AFTER]).double() + cost[:, None])
            full.append(t.flops.double() + cost[-1])
            final.append(out)
    final = torch.cat(final)
    return {"y": torch.cat(ys, 1), "conf": torch.cat(confs, 1), "pooled": torch.cat(pooled, 1), "flops": torch.cat(flops, 1),
            "full": torch.cat(full), "final": final, "final_pred": probe.predict(final)}


def probe_logits(probe: LinearProbe):
    """The novel probe as a function: embedding (N, D) -> logits (N, classes)."""
    return lambda x: probe.lin((x - probe.mean) / probe.std)


def distilled(x: torch.Tensor, target: torch.Tensor):
    """An exit's classifier fitted as edge fits a classifier's exit head, without labels: LayerNorm,
    then the least-squares map from the pooled states x to the final logits."""
    norm, lin = nn.LayerNorm(x.shape[1]), nn.Linear(x.shape[1], target.shape[1])
    with torch.no_grad():
        fit_linear_(lin, norm(x), target)
    return lambda z: lin(norm(z))


def scores(rule: str, p: dict, probe, classifiers: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule's score at each exit (E, N) (a passage leaves at the first exit whose score >= t) and
    the label each exit predicts (E, N)."""
    y, final, task = p["y"], p["final"], probe_logits(probe)
    with torch.no_grad():
        if rule in classifiers:  # the exit's own classifier answers, with its own confidence
            probs = torch.stack([c(x) for c, x in zip(classifiers[rule], p["pooled"])]).softmax(-1)
            return probs.amax(-1), probs.argmax(-1)
        probs = torch.stack([task(e) for e in y]).softmax(-1)  # the task head on each exit's output
    pred = probs.argmax(-1)
    if rule == "learned":
        return p["conf"].float(), pred
    if rule == "patience":
        agree = F.cosine_similarity(y[1:], y[:-1], dim=-1)
        return torch.cat([torch.full_like(agree[:1], -2.0), agree]), pred  # (no previous exit at the first)
    if rule == "task head":
        return probs.amax(-1), pred
    if rule == "oracle cos":
        return F.cosine_similarity(y, final[None], dim=-1), pred
    return (pred == p["final_pred"]).float(), pred  # oracle task: 1 where the exit predicts what the full model does


def point(s: torch.Tensor, pred: torch.Tensor, t: float, p: dict, labels: torch.Tensor) -> tuple[float, float, float]:
    """(t, FLOPs fraction, accuracy) when every passage leaves at its first exit whose score >= t."""
    go = s >= t
    first = torch.where(go.any(0), go.float().argmax(0), torch.full_like(go[0], len(AFTER), dtype=torch.long))
    n = torch.arange(s.shape[1])
    stay = first == len(AFTER)
    e = first.clamp(max=len(AFTER) - 1)
    flops = torch.where(stay, p["full"], p["flops"][e, n])
    got = torch.where(stay, p["final_pred"], pred[e, n])
    return t, float(flops.sum() / p["full"].sum()), float((got == labels).float().mean())


def curve(rule: str, p: dict, labels: torch.Tensor, probe, classifiers) -> list[tuple[float, float, float]]:
    """[(t, FLOPs fraction, accuracy)] over the rule's threshold grid."""
    s, pred = scores(rule, p, probe, classifiers)
    ts = torch.quantile(s.flatten().double(), torch.linspace(0, 1, GRID, dtype=torch.double)).tolist() + [float("inf")]
    return [point(s, pred, t, p, labels) for t in sorted(set(ts))]


def least_flops(rows, acc_full: float) -> tuple[float, float, float] | None:
    ok = [r for r in rows if r[2] >= acc_full - 0.01]
    return min(ok, key=lambda r: r[1]) if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=4800, help="training passages (the exit heads' data)")
    ap.add_argument("--calib", type=int, default=1792, help="calibration passages, the thresholds chosen on them (default: all)")
    ap.add_argument("--test", type=int, default=2688, help="held-out test passages scored (default: all)")
    args = ap.parse_args()
    _, tok, texts, probe, train, heads = with_exits(args.train)
    data = {}
    for split, n in (("probe", None), ("calib", args.calib), ("test", args.test)):
        part = texts.split(split) if n is None else texts.split(split).head(n)
        data[split] = (passes(heads, edge.batches(tok, part.texts, 64), probe), torch.tensor(part.labels))
    fitted, y = data.pop("probe")  # the passages the novel probe was fitted on: each exit's classifier too
    on_train = passes(heads, train, probe)  # the exit heads' passages: each exit's map to the task head's logits
    with torch.no_grad():
        target = probe_logits(probe)(on_train["final"])
    classifiers = {"exit classifiers": [probe_logits(LinearProbe().fit(x, y)) for x in fitted["pooled"]],
                   "distilled classifiers": [distilled(x, target) for x in on_train["pooled"]]}
    acc_full = {k: probe.accuracy(p["final"], y) for k, (p, y) in data.items()}
    print(f"full model: probe accuracy {acc_full['test']:.4f} on {args.test} test passages "
          f"({acc_full['calib']:.4f} on {args.calib} calibration passages)", flush=True)
    result = {"rule": [], "flops_frac": [], "acc": [], "best_flops_frac": [], "best_acc": [], "acc_full": acc_full["test"]}
    for rule in RULES:
        test = curve(rule, *data["test"], probe, classifiers)
        best = least_flops(test, acc_full["test"])
        chosen = best  # an oracle has no threshold to carry over: it is read off the test passages
        if not rule.startswith("oracle"):
            pick = least_flops(curve(rule, *data["calib"], probe, classifiers), acc_full["calib"])
            p, y = data["test"]
            chosen = point(*scores(rule, p, probe, classifiers), pick[0], p, y) if pick else None
        result["rule"].append(rule)
        for key, r in (("", chosen), ("best_", best)):
            result[key + "flops_frac"].append(round(r[1], 4) if r else None)
            result[key + "acc"].append(round(r[2], 4) if r else None)
        fmt = lambda r: f"{r[1]:.3f} of the FLOPs at accuracy {r[2]:.4f}" if r else "none within 1 point"  # noqa: E731
        print(f"{rule:12s} threshold from calibration: {fmt(chosen)} | best on test: {fmt(best)}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
