"""Shared test vectors for the plan drivers written in other languages (the Android demo's Java
interpreter; the native runner can read them too): for every branch-forcing case of a model, its plan
(routed mode), the inputs and knobs (flat, as a budget level's: the plan's knobs give their shapes), every method call the Python driver (device.driver.drive) made,
with the arrays it passed and got back, and the final outputs. Another driver replays the recorded
method outputs: it must make the same calls with the same arrays and return the same outputs, so the
decisions and the ACM token routing are checked without any runtime.

    vectors = export.vectors.trace(model, batch)      # [{"case", "plan", "inputs", "knobs", "calls", "expected"}]
    export.vectors.write(vectors, "out/vectors")       # one JSON file per case
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.files import write_json_atomic
from export.graph import GraphModel
from export.checks import force_cases
from export.lower import _inputs, plan_of
from device.driver import drive
from export.routed import Routed


def tensor(a: np.ndarray) -> dict:
    """An array as JSON: dtype, shape and the values in row-major order (float32 values are exact
    in a JSON double)."""
    a = np.asarray(a)
    kind = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64", np.dtype(np.bool_): "bool"}[a.dtype]
    return {"dtype": kind, "shape": list(a.shape), "data": a.ravel().tolist()}


def trace(model: nn.Module, example: dict, name: str = "model") -> list[dict]:
    graph = GraphModel(model)
    routed, args = Routed(graph), _inputs(graph, example)
    eager = routed.eager()
    methods = {m: "model.pte" for m in routed.modules}
    plan = plan_of(graph, model, "executorch", "routed", methods, args, {"routed": routed.section()},
                   [{"name": "own", **{k: v.reshape(-1).tolist() for k, v in graph.knobs().items()}}])
    inputs = {n: a.numpy() for n, a in zip(graph.input_names, args)}

    def vector(case: str, knobs: dict) -> dict:
        calls = []

        def call(method, arrays):
            got = eager(method, arrays)
            calls.append({"method": method, "inputs": [tensor(a) for a in arrays], "outputs": [tensor(o) for o in got]})
            return got

        shapes = {spec["name"]: spec["shape"] for spec in plan["knobs"]}  # (float32, shaped as the plan says)
        knobs = {k: np.asarray(v, dtype=np.float32).reshape(shapes[k]) for k, v in knobs.items()}
        with torch.no_grad():
            result = drive(plan["routed"], plan["model"]["layers"], call, inputs, knobs)
        return {"name": f"{name}: {case}", "case": case, "plan": plan,
                "inputs": {n: tensor(a) for n, a in inputs.items()},
                "knobs": {k: v.reshape(-1).tolist() for k, v in knobs.items()},  # (flat, row-major: the plan's shape)
                "calls": calls, "expected": dict(zip(plan["outputs"], map(tensor, result)))}

    out = [vector(case, knobs) for case, knobs in force_cases(graph)]
    full = next(v for v in out if v["case"] == "full")
    return out + [vector(case, knobs) for case, knobs in _boundaries(plan, full)]


def _boundaries(plan: dict, full: dict) -> list[tuple[str, dict]]:
    """Cases whose threshold is exactly the score it is compared with on the full path (read from
    that path's recorded calls): the decision at equality (>= : exit, keep) must be the same in every
    driver."""
    got = {c["method"]: c["outputs"] for c in full["calls"]}
    cases = []
    for seg in plan["routed"]["segments"]:
        then = seg["then"]
        if seg["method"] not in got or then["kind"] not in ("exit", "skip"):
            continue
        outputs = dict(zip(seg["outputs"], got[seg["method"]]))
        score = outputs["conf" if then["kind"] == "exit" else "score"]["data"][0]
        knob, j = ("exit_thresholds", then["exit"]) if then["kind"] == "exit" else ("skip_thresholds", then["router"])
        t = list(full["knobs"][knob])
        t[j] = score  # (a float32 value, exact in the JSON double: the very value the driver compares)
        cases.append((f"{then['kind']} threshold at its score, layer {then['layer']}", {**full["knobs"], knob: t}))
    return cases


def write(vectors: list[dict], directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(vectors):
        paths.append(d / f"vector{i:03d}.json")
        write_json_atomic(paths[-1], v)
    return paths


__all__ = ["tensor", "trace", "write"]
