"""The routed mode: the model cut at its gates into plain segments, and a small driver that runs them.

The network is a line of pieces: embed, then per layer [router] attention (ffn | gate finish) [exit],
then head. Four pieces end in a decision the driver takes:
  router  "skip": score >= skip_thresholds[r] runs the attention (or the block), else jumps past it;
  gate    "acm":  k per token; learner j runs on the tokens with k > j (gathered by the driver; with "top",
                  the ACM's exact top, a token with k = N runs the last piece, the original FFN, alone);
          "moe":  k per token, its experts as a bit mask; expert e runs on the tokens with bit e set;
  exit    "exit": confidence >= exit_thresholds[e] returns the exit's output, else goes on;
  head    "end":  the output.
A segment is every piece from a place the driver can jump to up to the next decision: one method of
the program (no control flow inside, so XNNPACK takes all of it; tokens are a bounded dynamic size).
The units of an adaptive FFN are one method: input j is the (m_j, d) tokens unit j runs on (an ACM: a
prefix of the tokens sorted by k, most first; a MoE: expert j's tokens in their order; m_j in 1..max
tokens, each its own dynamic size), output j what it adds to them. One call per layer instead of one
per unit: fewer calls a run, and fewer methods to lower (bench/acm_layer.py measures the forms).

The plan's "routed" section lists the segments (method, inputs, outputs, decision); `drive` executes
it with numpy and nothing else, in a loop simple enough to port to C++ and Java. It returns what the
in-graph mode returns: output, exit_layer (1,), skipped (L,), ks (A, T) (learners run per token, -1:
not reached), so `verify` checks both modes the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from device.driver import OUTPUTS
from export.graph import GraphModel

DECISION = {"router": "skip", "gate": "acm", "exit": "exit", "head": "end"}  # (a gate's: its FFN's `decision`)
CHANGES_H = {"embed", "attention", "ffn", "finish"}
READS_CTX = {"attention", "router", "exit", "head"}


@dataclass(frozen=True)
class Piece:
    kind: str  # embed | router | attention | ffn | gate | finish | exit | head
    layer: int = 0  # 1-based; 0 for embed and head

    @property
    def name(self) -> str:
        return f"{self.kind}{self.layer or ''}"


def pieces(g: GraphModel) -> list[Piece]:
    line = [Piece("embed")]
    for i in range(1, len(g.layers) + 1):
        line += [Piece("router", i)] if i in g.routers else []
        line += [Piece("attention", i)]
        line += [Piece("gate", i), Piece("finish", i)] if i in g.adaptive_index else [Piece("ffn", i)]
        line += [Piece("exit", i)] if i in g.heads else []
    return line + [Piece("head")]


class Segment(nn.Module):
    """Pieces line[start..stop] as one method: forward(*inputs) -> outputs, named by `inputs`/`outputs`."""

    def __init__(self, g: GraphModel, line: list[Piece], start: int, stop: int):
        super().__init__()
        self.g, self.run = g, line[start:stop + 1]
        first, last = self.run[0], self.run[-1]
        self.reads_ctx = any(p.kind in READS_CTX for p in self.run)
        arch = g.arch
        if first.kind == "embed":
            self.inputs = list(g.input_names)
        else:
            self.inputs = ["h"] + (["y"] if first.kind == "finish" else [])
            self.inputs += list(arch.ctx_inputs) if self.reads_ctx else []
        self.inputs += [g.adaptives[last.layer - 1].knob_name] if last.kind == "gate" else []
        changes = any(p.kind in CHANGES_H for p in self.run) and last.kind != "head"
        self.outputs = (["h"] if changes else []) + OUTPUTS[DECISION[last.kind]]

    def forward(self, *args: torch.Tensor):
        g, arch, s = self.g, self.g.arch, dict(zip(self.inputs, args))
        ctx = arch.context(s, s["h"]) if "h" in s and self.reads_ctx else {}  # FFNs read no context
        for p in self.run:
            layer = g.layers[p.layer - 1] if p.layer else None
            if p.kind == "embed":
                s["h"], ctx = arch.embed(g.model, s)
            elif p.kind == "router":
                s["score"] = g.routers[p.layer](arch.pool(s["h"], ctx)).reshape(1)
            elif p.kind == "attention":
                s["h"] = arch.attention(layer, s["h"], ctx)
            elif p.kind == "ffn":
                s["h"] = arch.feed_forward(layer, s["h"], ctx)
            elif p.kind == "gate":
                m, seen = g.adaptives[p.layer - 1], []
                arch.feed_forward(layer, s["h"], ctx, lambda x: seen.append(x) or x)  # the adaptive FFN's input
                s["x"] = seen[0].reshape(-1, m.d)  # (T, d)
                s["k"] = m.route(s["x"], s[m.knob_name][0])  # (T,) its row of the knob
            elif p.kind == "finish":
                m = g.adaptives[p.layer - 1]
                s["h"] = arch.feed_forward(layer, s["h"], ctx, lambda x: m.routed_output(s["y"].reshape(x.shape)))
            elif p.kind == "exit":
                y, conf = g.heads[p.layer](arch.pool(s["h"], ctx))
                s["exit_output"], s["conf"] = y, conf.reshape(1)
            else:
                s["output"] = arch.head(g.model, s["h"], ctx)
        return tuple(s[o] for o in self.outputs)


class Units(nn.Module):
    """Every unit of an adaptive FFN (an ACM's learners, a MoE's experts) as one method:
    forward(x_0, .., x_{N-1}) -> (unit j on x_j for each j), each x_j (m_j, d) with a size of its own."""

    def __init__(self, units: list[nn.Module]):
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(unit(x) for unit, x in zip(self.units, xs))


class Routed:
    """The segments and learners of a model, and the plan's "routed" section that links them."""

    def __init__(self, graph: GraphModel):
        self.graph = g = graph
        line = pieces(g)
        where = {p: n for n, p in enumerate(line)}
        stop_of = lambda n: next(q for q in range(n, len(line)) if line[q].kind in DECISION)  # noqa: E731
        starts, todo, decisions = [], [0], {}
        while todo:  # every place a decision can jump to starts a segment
            n = todo.pop()
            if n in starts:
                continue
            starts.append(n)
            q = stop_of(n)
            p = line[q]
            d = {"kind": DECISION[p.kind], "layer": p.layer}
            if p.kind == "router":
                after_ffn = where[Piece("finish" if p.layer in g.adaptive_index else "ffn", p.layer)] + 1
                d.update(router=g.router_index[p.layer], keep=q + 1,
                         skip=q + 2 if g.target == "attention" else after_ffn)
            elif p.kind == "gate":
                m = g.adaptives[p.layer - 1]
                d.update(kind=m.decision, **{m.decision: g.adaptive_index[p.layer]}, next=q + 1, **m.routed_then(p.layer))
            elif p.kind == "exit":
                d.update(exit=g.exit_index[p.layer], next=q + 1)
            decisions[n] = d
            todo += [d[t] for t in ("keep", "skip", "next") if t in d]
        starts.sort()
        index = {n: s for s, n in enumerate(starts)}
        self.modules: dict[str, nn.Module] = {}
        self.segments = []
        for n in starts:
            seg = Segment(g, line, n, stop_of(n))
            name = "_".join(p.name for p in seg.run)
            d = {k: (index[v] if k in ("keep", "skip", "next") else v) for k, v in decisions[n].items()}
            self.modules[name] = seg
            self.segments.append({"method": name, "inputs": seg.inputs, "outputs": seg.outputs, "then": d})
        for i in sorted(g.adaptive_index):
            m = g.adaptives[i - 1]
            self.modules[m.routed_method(i)] = Units([m.routed_unit(j) for j in range(m.n)])

    def section(self) -> dict:
        return {"segments": self.segments, "acms": len(self.graph.adaptive_index)}

    def eager(self) -> Callable[[str, list[np.ndarray]], list[np.ndarray]]:
        """call(method, arrays) through the eager modules: the reference the programs are checked against."""
        def call(name, arrays):
            with torch.no_grad():
                out = self.modules[name](*(torch.from_numpy(a) for a in arrays))
            return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

        return call
