"""An exported artifact: a directory with the program file, its plan (plan.json) and the bundled
branch-forcing checks (checks.safetensors). The plan records the control flow, the input and output
spec, the knobs and the SHA-256 of every file it belongs to; loading refuses a mismatch."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

PLAN = "plan.json"
CHECKS = "checks.safetensors"
TOKENIZER = "tokenizer"  # (a directory, present when the export was given a tokenizer)
PLAN_FORMAT = "edge-plan"
PLAN_VERSION = 3  # 2: "methods" (one or more per program) and the routed mode; 3: one learners method per ACM
DTYPES = {"int64": np.int64, "float32": np.float32, "bool": np.bool_}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    """path: the artifact directory; plan: its parsed plan.json."""

    path: Path
    plan: dict

    @property
    def programs(self) -> list[Path]:
        """The program files (one .pte; one .onnx per method in the routed mode)."""
        return [self.path / f for f in sorted(set(self.plan["methods"].values()))]

    def runner(self, threads: int | None = None, device: str = "cpu"):
        """A function list of np arrays (inputs then knobs, as the plan lists them) -> outputs.
        threads: the runtime's CPU threads (default: its own choice); device: "cpu" or "cuda". In the
        routed mode the plan's driver (export.routed.drive) runs the methods."""
        from export.runtime import RUNTIMES

        return self.plan_runner(RUNTIMES.get(self.plan["runtime"]).load(self.path, self.plan["methods"], threads, device))

    def profiled_runner(self, threads: int | None = None, device: str = "cpu"):
        """(run, ops): `runner` with the runtime's per-operator profiler on; ops: its export.runtime.OpProfile."""
        from export.runtime import RUNTIMES

        methods, ops = RUNTIMES.get(self.plan["runtime"]).profile(self.path, self.plan["methods"], threads, device)
        return self.plan_runner(methods), ops

    def checks(self) -> dict[str, np.ndarray]:
        """The bundled checks: "input.NAME", and per case c "caseC.KNOB" and "caseC.expected.OUTPUT"."""
        from safetensors.numpy import load_file

        return load_file(str(self.path / CHECKS))

    def inputs(self, checks: dict | None = None) -> list[np.ndarray]:
        """The bundled example input (the one the export traced), in the plan's input order."""
        t = checks if checks is not None else self.checks()
        return [t[f"input.{s['name']}"] for s in self.plan["inputs"]]

    def plan_runner(self, methods: dict):
        """`runner` over the given method functions {method: f(arrays) -> arrays} (wrap a runtime's
        to observe the calls)."""
        from export.routed import drive

        plan = self.plan
        specs = plan["inputs"] + plan["knobs"]
        if plan["mode"] == "graph":
            run = methods["forward"]
        else:
            names, n = [s["name"] for s in specs], len(plan["inputs"])

            def run(values: list[np.ndarray]) -> list[np.ndarray]:
                return drive(plan["routed"], plan["model"]["layers"], lambda m, a: methods[m](a),
                             dict(zip(names[:n], values[:n])), dict(zip(names[n:], values[n:])))

        def checked(values: list[np.ndarray]) -> list[np.ndarray]:
            if len(values) != len(specs):
                raise EdgeError(f"the artifact takes {len(specs)} inputs ({', '.join(s['name'] for s in specs)}), got {len(values)}")
            for v, s in zip(values, specs):
                check_input(v, s)
            return run(values)

        return checked


def check_input(v: np.ndarray, spec: dict) -> None:
    """One input against its spec {name, dtype, shape}; a str dim is a dynamic size in [min, max]."""
    want = DTYPES[spec["dtype"]]
    if v.dtype != want:
        raise EdgeError(f"input {spec['name']} must be {spec['dtype']}, got {v.dtype}")
    shape = spec["shape"]
    ok = len(v.shape) == len(shape) and all(
        (isinstance(s, int) and n == s) or (isinstance(s, str) and spec["min"] <= n <= spec["max"])
        for n, s in zip(v.shape, shape))
    if not ok:
        dims = ", ".join(str(s) if isinstance(s, int) else f"{s} in {spec['min']}..{spec['max']}" for s in shape)
        raise EdgeError(f"input {spec['name']} must have shape ({dims}), got {tuple(v.shape)}")


def load_artifact(path: str | Path) -> Artifact:
    """Open an artifact directory and check that its files are the ones its plan was written for."""
    path = Path(path)
    plan_path = path / PLAN
    if not plan_path.is_file():
        raise EdgeError(f"{path} is not an edge artifact (no {PLAN}); export one with `edge export`")
    try:
        plan = json.loads(plan_path.read_text())
        assert plan["format"] == PLAN_FORMAT and isinstance(plan["files"], dict)
    except Exception:
        raise EdgeError(f"{plan_path} is not a valid edge plan; export the model again") from None
    if plan.get("version") != PLAN_VERSION:
        raise EdgeError(f"{plan_path} has plan version {plan.get('version')}; this edge reads version {PLAN_VERSION}")
    for name, digest in plan["files"].items():
        f = path / name
        if not f.is_file():
            raise EdgeError(f"{f} is missing; the artifact is incomplete, export it again")
        if sha256(f) != digest:
            raise EdgeError(f"{f} does not match its plan (SHA-256 differs): it was changed or truncated; export it again")
    return Artifact(path, plan)
