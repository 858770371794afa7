"""An exported artifact: a directory with the program file, its plan (plan.json) and the bundled
branch-forcing checks (checks.safetensors). The plan records the control flow, the input and output
spec, the knobs and the SHA-256 of every file it belongs to; loading refuses a mismatch."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.schema import PLAN_VERSION  # (device/plan.schema.json's version const: the format is defined there)
from edge.errors import EdgeError
from edge.files import sha256

PLAN = "plan.json"
CHECKS = "checks.safetensors"
TOKENIZER = "tokenizer"  # (a directory, present when the export was given a tokenizer)
PLAN_FORMAT = "edge-plan"
DTYPES = {"int64": np.int64, "float32": np.float32, "bool": np.bool_}


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")  # a file, method, knob or tensor name: never a path
DIGEST = "plan_sha256"  # plan.json's own digest: of the plan without this key, canonical JSON


def plan_digest(plan: dict) -> str:
    """The SHA-256 of the plan (every key but its own digest), as canonical JSON: what the artifact's
    integrity check and a preset's `artifact` field record."""
    import hashlib

    body = {k: v for k, v in plan.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def safe_name(name, what: str) -> str:
    """`name` if it is a plain name (letters, digits, _ . + -; no separator, no leading dot), else EdgeError."""
    if not (isinstance(name, str) and NAME.fullmatch(name) and ".." not in name):
        raise EdgeError(f"{what} {str(name)[:80]!r} is not a plain name (letters, digits, _ . + -)")
    return name


def safe_file(name, what: str = "a file of the plan") -> str:
    """A file inside the artifact: a plain name, or TOKENIZER/a plain name."""
    parts = name.split("/") if isinstance(name, str) else [name]
    if len(parts) == 2 and parts[0] == TOKENIZER:
        safe_name(parts[1], what)
    elif len(parts) != 1:
        raise EdgeError(f"{what} {str(name)[:80]!r} is not a plain file name inside the artifact")
    else:
        safe_name(name, what)
    return name


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
        routed mode the plan's driver (device.driver.drive) runs the methods."""
        from device.runtime import RUNTIMES

        return self.plan_runner(RUNTIMES.get(self.plan["runtime"]).load(self.path, self.plan["methods"], threads, device))

    def profiled_runner(self, threads: int | None = None, device: str = "cpu"):
        """(run, ops): `runner` with the runtime's per-operator profiler on; ops: its device.runtime.OpProfile."""
        from device.runtime import RUNTIMES

        methods, ops = RUNTIMES.get(self.plan["runtime"]).profile(self.path, self.plan["methods"], threads, device)
        return self.plan_runner(methods), ops

    def checks(self) -> dict[str, np.ndarray]:
        """The bundled checks: "input.NAME", and per case c "caseC.KNOB" and "caseC.expected.OUTPUT"."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(self.path / CHECKS))
        except (SafetensorError, OSError, ValueError) as e:
            raise EdgeError(f"{self.path / CHECKS} is not a readable safetensors file ({str(e)[:120]}); "
                            "export the model again") from None

    def inputs(self, checks: dict | None = None) -> list[np.ndarray]:
        """The bundled example input (the one the export traced), in the plan's input order."""
        t = checks if checks is not None else self.checks()
        return [t[f"input.{s['name']}"] for s in self.plan["inputs"]]

    def plan_runner(self, methods: dict):
        """`runner` over the given method functions {method: f(arrays) -> arrays} (wrap a runtime's
        to observe the calls)."""
        from device.driver import drive

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
            for v, s in zip(values[len(plan["inputs"]):], plan["knobs"]):
                if not np.isfinite(v).all():
                    raise EdgeError(f"knob {s['name']} must be finite, got {v.tolist()}")
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


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise EdgeError(f"malformed: {what}")


def _is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _spec_ok(spec, what: str) -> None:
    _check(isinstance(spec, dict), f"{what} must be objects")
    safe_name(spec.get("name"), f"{what} name")
    _check(spec.get("dtype") in DTYPES, f"{what} {spec['name']}: dtype must be one of {', '.join(DTYPES)}")
    shape = spec.get("shape")
    _check(isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d, 1) or d == "tokens" for d in shape),
           f"{what} {spec['name']}: shape must list sizes >= 1 or 'tokens'")
    if "tokens" in shape:
        _check(_is_int(spec.get("min"), 1) and _is_int(spec.get("max"), 1) and spec["min"] <= spec["max"],
               f"{what} {spec['name']}: a dynamic size needs min <= max")


def check_plan(plan) -> dict:
    """The plan's structure, every name in it a plain name and every index in range, so that no
    driver reads outside the artifact or fails on a key: returns the plan or raises EdgeError."""
    _check(isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT, f"not an {PLAN_FORMAT} file")
    _check(plan.get("version") == PLAN_VERSION, f"plan version {str(plan.get('version'))[:20]}; this edge reads "
                                                f"version {PLAN_VERSION}: export the model again")
    files = plan.get("files")
    _check(isinstance(files, dict) and files, "files must map file names to SHA-256 digests")
    for name, digest in files.items():
        safe_file(name)
        _check(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None, f"the digest of {name}")
    _check(CHECKS in files, f"files must list {CHECKS}")
    _check(plan.get("runtime") in ("executorch", "onnx", "litert") and plan.get("mode") in ("graph", "routed"),
           "runtime must be executorch, onnx or litert and mode graph or routed")
    methods = plan.get("methods")
    _check(isinstance(methods, dict) and methods, "methods must map method names to program files")
    for m, f in methods.items():
        safe_name(m, "a method")
        _check(isinstance(f, str) and f in files and "/" not in f, f"method {m}'s file must be one of the plan's files")
    if plan["mode"] == "graph":
        _check("forward" in methods, "a graph-mode plan needs the method forward")
    model = plan.get("model")
    _check(isinstance(model, dict) and _is_int(model.get("layers"), 1)
           and model.get("output_kind") in ("embedding", "logits"), "model must give layers and output_kind")
    safe_name(model.get("type"), "the model type")
    safe_name(model.get("architecture"), "the architecture")
    layers = model["layers"]
    for key in ("inputs", "knobs"):
        _check(isinstance(plan.get(key), list), f"{key} must be a list")
        for spec in plan[key]:
            _spec_ok(spec, key)
    _check(len(plan["inputs"]) >= 1, "inputs must not be empty")
    knobs = {s["name"]: s for s in plan["knobs"]}
    _check(set(knobs) <= {"exit_thresholds", "skip_thresholds", "gate_bias", "experts"}, "unknown knobs")
    outputs = plan.get("outputs")
    _check(isinstance(outputs, list) and outputs[:3] == ["output", "exit_layer", "skipped"]
           and set(outputs[3:]) <= {"ks"}, "outputs must be output, exit_layer, skipped[, ks]")
    flow = plan.get("control_flow")
    _check(isinstance(flow, dict) and all(isinstance(flow.get(k), list) for k in ("exits", "routers", "acms")),
           "control_flow must list exits, routers and acms")
    for key, knob in (("exits", "exit_thresholds"), ("routers", "skip_thresholds"), ("acms", "gate_bias")):
        for j, item in enumerate(flow[key]):
            _check(isinstance(item, dict) and item.get("index") == j and knob in knobs
                   and all(_is_int(item.get(f), 1) and item[f] <= layers for f in ("after", "layer") if f in item),
                   f"control_flow {key} entry {j}")
        if flow[key]:
            _check(knobs[knob]["shape"] == [len(flow[key])], f"knob {knob} must have one value per {key[:-1]}")
    for j, item in enumerate(flow["acms"]):
        _check(_is_int(item.get("learners"), 1), f"control_flow acms entry {j}: learners")
    moes = flow.get("moes", [])  # (a plan of before sigma-MoE has none)
    _check(isinstance(moes, list), "control_flow moes must be a list")
    for j, item in enumerate(moes):
        _check(isinstance(item, dict) and item.get("index") == j and item.get("knob") == "experts" and "experts" in knobs
               and _is_int(item.get("layer"), 1) and item["layer"] <= layers and _is_int(item.get("experts"), 1)
               and item["experts"] <= 62 and item.get("mode") in ("adaptive", "topk"), f"control_flow moes entry {j}")
    if moes:
        _check(knobs["experts"]["shape"] == [len(moes), moes[0]["experts"] + 1]
               and all(m["experts"] == moes[0]["experts"] for m in moes),
               "knob experts must have one row [K, a price per expert] per MoE")
    levels = plan.get("budget_levels")
    _check(isinstance(levels, list) and levels, "budget_levels must be a non-empty list")
    for level in levels:
        _check(isinstance(level, dict) and isinstance(level.get("name"), str) and len(level["name"]) <= 200,
               "every budget level needs a name")
        for k, spec in knobs.items():
            v = level.get(k)
            _check(isinstance(v, list) and len(v) == int(np.prod(spec["shape"]))
                   and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
                   f"budget level {level['name'][:40]!r}: {k} must be {int(np.prod(spec['shape']))} finite numbers")
    checks = plan.get("checks")
    _check(isinstance(checks, list) and all(isinstance(c, dict) and isinstance(c.get("case"), str) for c in checks),
           "checks must list the bundled cases")
    tol = plan.get("tolerance")
    _check(isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < 1, "tolerance must be in (0, 1)")
    if "near_tie" in plan:
        v = plan["near_tie"]
        _check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "near_tie must be in [0, 1)")
    for c in checks:
        if "margin" in c:
            _check(isinstance(c["margin"], (int, float)) and not isinstance(c["margin"], bool), "a check's margin")
    if "tokenizer" in plan:
        _check(plan["tokenizer"] == TOKENIZER, f"tokenizer must be {TOKENIZER!r}")
    if plan["mode"] == "routed":
        _check_routed(plan.get("routed"), methods, knobs, flow, layers)
    return plan


def _check_routed(section, methods: dict, knobs: dict, flow: dict, layers: int) -> None:
    _check(isinstance(section, dict) and isinstance(section.get("segments"), list) and section["segments"],
           "routed must list the segments")
    segments = section["segments"]
    n = len(segments)
    count = {"skip": ("router", "routers"), "acm": ("acm", "acms"), "moe": ("moe", "moes"), "exit": ("exit", "exits")}
    _check(section.get("acms") == len(flow["acms"]) + len(flow.get("moes", [])),
           "routed.acms must count the adaptive FFNs (ACMs and MoEs)")
    for s, seg in enumerate(segments):
        _check(isinstance(seg, dict) and seg.get("method") in methods, f"segment {s}: its method must be one of methods")
        for key in ("inputs", "outputs"):
            _check(isinstance(seg.get(key), list) and all(isinstance(v, str) for v in seg[key]), f"segment {s}: {key}")
            for v in seg[key]:
                safe_name(v, f"segment {s}'s {key[:-1]}")
        then = seg.get("then")
        _check(isinstance(then, dict) and then.get("kind") in ("end", "skip", "acm", "moe", "exit"), f"segment {s}: then.kind")
        for key in ("next", "keep", "skip"):
            if key in then:
                _check(_is_int(then[key]) and s < then[key] < n, f"segment {s}: then.{key} must be a later segment")
        if then["kind"] in count:
            field, flows = count[then["kind"]]
            _check(_is_int(then.get(field)) and then[field] < len(flow.get(flows, [])), f"segment {s}: then.{field}")
            _check(_is_int(then.get("layer", 1), 1) and then.get("layer", 1) <= layers, f"segment {s}: then.layer")
            _check(all(k in then for k in (("keep", "skip") if then["kind"] == "skip" else ("next",))),
                   f"segment {s}: then needs its next segments")
        if then["kind"] == "acm":
            _check(then.get("learners") in methods and _is_int(then.get("n"), 1), f"segment {s}: then.learners")
        if then["kind"] == "moe":
            _check(then.get("experts") in methods and then.get("n") == flow["moes"][then["moe"]]["experts"],
                   f"segment {s}: then.experts")


def load_artifact(path: str | Path) -> Artifact:
    """Open an artifact directory and check it: plan.json's own digest and structure (every name in it
    a plain name inside the artifact), then that its files are the ones its plan was written for."""
    path = Path(path)
    plan_path = path / PLAN
    if not path.is_dir():
        raise EdgeError(f"{path} is not an edge artifact directory; export one with `edge export`")
    if not plan_path.is_file():
        raise EdgeError(f"{path} is not an edge artifact (no {PLAN}); export one with `edge export`")
    try:
        plan = json.loads(plan_path.read_text(), parse_constant=lambda c: float(c))
    except (ValueError, UnicodeDecodeError, OSError):
        raise EdgeError(f"{plan_path} is not a valid edge plan (not JSON); export the model again") from None
    if isinstance(plan, dict) and plan.get("format") == PLAN_FORMAT and plan.get("version") == PLAN_VERSION:
        if DIGEST not in plan:
            raise EdgeError(f"{plan_path} carries no digest of its own (exported by an older edge); export the model again")
        if plan[DIGEST] != plan_digest(plan):
            raise EdgeError(f"{plan_path} does not match its own digest: it was changed or damaged after the export; "
                            "export the model again")
    try:
        check_plan(plan)
    except EdgeError as e:
        raise EdgeError(f"{plan_path} is not a valid edge plan ({e}); export the model again") from None
    root = path.resolve()
    for name, digest in plan["files"].items():
        f = path / name
        if f.is_symlink() or not f.resolve().is_relative_to(root):
            raise EdgeError(f"{f} is a link or lies outside the artifact; an artifact holds its own files only")
        if not f.is_file():
            raise EdgeError(f"{f} is missing; the artifact is incomplete, export it again")
        if sha256(f) != digest:
            raise EdgeError(f"{f} does not match its plan (SHA-256 differs): it was changed or truncated; export it again")
    return Artifact(path, plan)
