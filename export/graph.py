"""One exportable graph of an adaptive model, with its control flow kept (the in-graph mode).

`GraphModel` runs ONE input (batch 1) of a model with exits, skip routers and ACM FFNs:
  exits    torch.cond(confidence >= threshold): the true branch returns the exit's output, the false
           branch holds the rest of the network (nested, so an exit really stops the work);
  routers  torch.cond(score >= threshold): run the attention (or the whole block) or pass h through;
  adaptive FFNs (edge.adaptive: an ACM, a sigma-MoE)  per unit (learner, expert), NonZero ->
           index_select -> unit -> index_add over the tokens that need it (spare=True: each unit on
           one spare row besides, its output read back by index_select).
The knobs are graph INPUTS, not constants: `exit_thresholds` (one per exit), `skip_thresholds` (one per
router), `gate_bias` (one per ACM) or `experts` (one row per MoE), each present only when the model has
such gates. A driver
sets a budget level by feeding them, and `verify` forces every branch through them. Besides the output, the graph returns the branch it took:
`exit_layer` (1,), `skipped` (L,) and, with adaptive FFNs, `ks` (A, T) each token's route (-1: not
reached): an ACM's learners run, a MoE's experts as a bit mask (AdaptiveFFN.gathered).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edge.adaptive import adaptive_of
from edge.arch import arch_for
from edge.exits import exit_heads
from edge.parts import knobs_of, parts
from edge.skips import routers


def _cond(pred: torch.Tensor, true_fn, false_fn, operands: tuple):
    """torch.cond while exporting (the branch goes into the graph); a plain `if` in eager, where
    torch.cond would compile each branch (slow, and it trips over dynamic shapes in torch 2.13)."""
    if torch.compiler.is_exporting():
        return torch.cond(pred, true_fn, false_fn, operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


class GraphModel(nn.Module):
    """model (with any of exits, routers, adaptive FFNs) -> forward(*model_inputs, *knobs) for batch 1."""

    def __init__(self, model: nn.Module, spare: bool = False):
        super().__init__()
        self.model, self.arch = model.eval(), arch_for(model)
        self.spare = spare  # the gathers' form for a backend that takes no empty tensor (AdaptiveFFN.gathered)
        self.input_names = list(self.arch.inputs)
        self.layers = self.arch.layers(model)
        self.heads, self.routers = exit_heads(model), routers(model)
        self.adaptives = [adaptive_of(layer) for layer in self.layers]
        self.exit_index = {a: e for e, a in enumerate(sorted(self.heads))}
        self.router_index = {i: r for r, i in enumerate(sorted(self.routers))}
        self.adaptive_index = {i: a for a, i in enumerate(i for i, m in enumerate(self.adaptives, 1) if m is not None)}
        self.target = parts(model).config("skips").target if self.routers else "attention"
        # eager only (export.verify): `follow` = {"exit_layer", "skipped", "ks"} makes every decision take
        # that branch instead of its own; `margins`, a list, collects (decision, distance of its score
        # from the threshold, whether followed against its own choice) for every decision made
        self.follow: dict | None = None
        self.margins: list | None = None
        n = len(self.layers)
        # constants the branches return come from buffers: a tensor made inside a cond branch breaks export
        self.register_buffer("steps", torch.arange(n + 1), persistent=False)
        self.register_buffer("no_skips", torch.zeros(n, dtype=torch.bool), persistent=False)

    def knobs(self) -> dict[str, torch.Tensor]:
        """The model's own setting as knob tensors (what eager `edge.run` does): one per installed
        transform with a knob (edge.parts.Knob), so only the knobs the model has (a runtime may not take
        an empty input: ExecuTorch aborts on one)."""
        return {k.name: k.own(self.model) for _, k in knobs_of(self.model)}

    def output_names(self) -> list[str]:
        return ["output", "exit_layer", "skipped"] + (["ks"] if self.adaptive_index else [])

    def forward(self, *args: torch.Tensor):
        inputs = dict(zip(self.input_names, args))
        knobs = dict(zip(self.knobs(), args[len(self.input_names):]))
        h, ctx = self.arch.embed(self.model, inputs)  # (1, T, d)
        out = self._tail(1, h, ctx, knobs)
        return out if self.adaptive_index else out[:3]

    # --- layer i onwards: (output (1, D), exit layer (1,), skipped (L-i+1,), ks (A_rest, T)) -------
    def _tail(self, i: int, h: torch.Tensor, ctx: dict, knobs: dict):
        n = len(self.layers)
        if i > n:
            return self.arch.head(self.model, h, ctx), self.steps[n:].clone(), self.no_skips[:0].clone(), self._unrun(h, i)
        layer, router = self.layers[i - 1], self.routers.get(i)
        if router is None:
            skipped = self.no_skips[:1].clone()
            h, k = self._ffn(i, self.arch.attention(layer, h, ctx), ctx, knobs)
        else:
            keep = self._decide(f"router {i}", router(self.arch.pool(h, ctx))[0],
                                knobs["skip_thresholds"][self.router_index[i]],
                                None if self.follow is None else not self.follow["skipped"][i - 1])
            skipped = (~keep).reshape(1)
            if self.target == "attention":
                h = _cond(keep, lambda h: self.arch.attention(layer, h, ctx), lambda h: h.clone(), (h,))
                h, k = self._ffn(i, h, ctx, knobs)
            else:  # the whole block
                has_adaptive = self.adaptives[i - 1] is not None

                def run_block(h):
                    h, k = self._ffn(i, self.arch.attention(layer, h, ctx), ctx, knobs)
                    return (h, k) if has_adaptive else (h,)

                def pass_block(h):
                    return (h.clone(), self._unrun(h, i, i + 1)[0]) if has_adaptive else (h.clone(),)

                res = _cond(keep, run_block, pass_block, (h,))
                h, k = res[0], (res[1] if has_adaptive else None)
        head = self.heads.get(i)
        if head is None:
            out, layer_out, rest_skipped, rest_ks = self._tail(i + 1, h, ctx, knobs)
        else:
            # the exit's output is made in the branch that returns it: outside, only the confidence is
            # (an embedding head's projection then runs only when the exit is taken); a copy, as a cond
            # operand may not alias another (a ViT pools a slice of h)
            pooled = self.arch.pool(h, ctx).clone()
            leave = self._decide(f"exit {i}", head(pooled)[1][0], knobs["exit_thresholds"][self.exit_index[i]],
                                 None if self.follow is None else self.follow["exit_layer"] == i)

            def stop(h, pooled):
                return head(pooled)[0], self.steps[i:i + 1].clone(), self.no_skips[i:].clone(), self._unrun(h, i + 1)

            def go_on(h, pooled):
                return self._tail(i + 1, h, ctx, knobs)

            out, layer_out, rest_skipped, rest_ks = _cond(leave, stop, go_on, (h, pooled))
        ks = rest_ks if k is None else torch.cat([k[None], rest_ks])
        return out, layer_out, torch.cat([skipped, rest_skipped]), ks

    def _ffn(self, i: int, h: torch.Tensor, ctx: dict, knobs: dict):
        """(h after the layer's FFN, each token's route (T,) or None without an adaptive FFN)."""
        m, layer = self.adaptives[i - 1], self.layers[i - 1]
        if m is None:
            return self.arch.feed_forward(layer, h, ctx), None
        ran = []  # local to this call: a cond branch may not write state outside itself
        a = self.adaptive_index[i]
        knob = knobs[m.knob_name][a]

        def ffn(x):
            route = self._choose(f"{type(m).__name__.lower()} {i}", m, x, knob, a) if self._watching() else None
            y, r = m.gathered(x, knob, self.spare, route)
            ran.append(r)
            return y

        return self.arch.feed_forward(layer, h, ctx, ffn), ran[0]

    # --- decisions, and what verify learns of them in eager ------------------------------------------
    def _watching(self) -> bool:
        return (self.follow is not None or self.margins is not None) and not torch.compiler.is_exporting()

    def _decide(self, name: str, score: torch.Tensor, threshold: torch.Tensor, want: bool | None) -> torch.Tensor:
        """score >= threshold; in eager under verify, the margin is noted and `want` (the branch to
        follow) taken instead where given."""
        pred = score >= threshold
        if not self._watching():
            return pred
        own = bool(pred)
        take = own if want is None or self.follow is None else bool(want)
        if self.margins is not None:
            self.margins.append((name, abs(float(score) - float(threshold)), take != own))
        return torch.tensor(take)

    def _choose(self, name: str, m, x: torch.Tensor, knob: torch.Tensor, a: int) -> torch.Tensor:
        """The routes per token (M,): the gate's own, or the followed ones; the margin noted
        (AdaptiveFFN.decide)."""
        take, margin, followed = m.decide(x, knob, None if self.follow is None else self.follow["ks"][a])
        if self.margins is not None:
            self.margins.append((name, margin, followed))
        return take

    def _unrun(self, h: torch.Tensor, first: int, last: int | None = None) -> torch.Tensor:
        """ks rows of -1 for the adaptive layers first..last-1 (default: to the end) that did not run."""
        rows = sum(1 for j in self.adaptive_index if j >= first and (last is None or j < last))
        return torch.full_like(h[0, :, 0], -1, dtype=torch.long)[None].expand(rows, -1).clone()
