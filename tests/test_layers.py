"""The project's layering, read from the source: every import between project modules (at module level
and inside functions) goes down or sideways in

    base (edge.errors/registry/config/files/console) < device < model (edge) < export < profiler < cli

with no cycle between modules, and the device side imports neither torch nor the model side (also run
for real: the measurer in a process where `import torch` fails)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "export", "device", "profiler", "edge_cli")
BASE = {"edge.errors", "edge.registry", "edge.config", "edge.files", "edge.console"}
ORDER = ["base", "device", "model", "export", "profiler", "cli"]
# torch and the model side's libraries, which the device side never imports
HEAVY = ("torch", "transformers", "torchao", "executorch.exir", "litert_torch", "onnxscript")
# the one place the device side imports torch: the ExecuTorch wheel's Python bindings take torch tensors
DEVICE_TORCH = {"device.executorch"}


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "edge.__main__" or module.startswith("edge_cli"):
        return "cli"  # (python -m edge: the launcher, which nothing imports)
    top = module.split(".")[0]
    return {"edge": "model", "device": "device", "export": "export", "profiler": "profiler"}[top]


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = p
    return found


def imports(name: str, path: Path, known: dict) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file, resolved to the project's
    modules where they are one (`from pkg import sub` names the submodule) or kept as written."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                                 for n in ast.walk(s)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in known else base, node.lineno, id(node) in top_level))
    return out


def graph() -> tuple[dict, dict]:
    known = modules()
    edges, external = {}, {}
    for name, path in known.items():
        for target, line, top in imports(name, path, known):
            if target in known:
                if target != name:
                    edges.setdefault(name, {})[target] = line
            else:
                external.setdefault(name, []).append((target, line, top))
    return edges, external


def test_no_upward_import():
    edges, _ = graph()
    bad = [f"{a} ({layer(a)}) imports {b} ({layer(b)}), line {line}" for a, targets in sorted(edges.items())
           for b, line in targets.items() if ORDER.index(layer(b)) > ORDER.index(layer(a))]
    # the device side and the model side are apart: neither imports the other
    bad += [f"{a} imports {b}, line {line}: the device side and the model side are apart"
            for a, targets in sorted(edges.items()) for b, line in targets.items()
            if {layer(a), layer(b)} == {"device", "model"}]
    assert not bad, "\n".join(bad)


def test_no_cycle():
    edges, _ = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(modules()):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_device_side_imports_no_torch():
    edges, external = graph()
    device = [m for m in modules() if layer(m) in ("device", "base")]
    bad = [f"{m} imports {t} (line {line})" for m in device for t, line, top in external.get(m, [])
           if t.split(".")[0] in {h.split(".")[0] for h in HEAVY} and t.startswith(HEAVY)
           and not (m in DEVICE_TORCH and not top)]
    assert not bad, "\n".join(bad)


def test_the_model_side_does_not_import_itself_through_the_package():
    """`import edge` inside edge/ would hide an import of any public module (edge/__init__ is lazy)."""
    edges, _ = graph()
    bad = [f"{m} imports the package edge (line {line})" for m, targets in edges.items()
           if layer(m) in ("base", "model") for t, line in targets.items() if t == "edge"]
    assert not bad, "\n".join(bad)


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def _measure_without_torch(tmp_path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("runtime", ["onnx", "litert"])
def test_the_measurer_runs_without_torch(bert_all_gates, tmp_path, runtime):
    """The device side's measurer (python -m device.measure) on a real artifact, in a process where
    `import torch` fails: it reads the plan, drives the routed/graph program and writes its records."""
    if runtime == "litert":
        pytest.importorskip("ai_edge_litert")
    _, _, artifact = bert_all_gates(runtime)
    out = tmp_path / "records.jsonl"
    r = _measure_without_torch(tmp_path, f"""
import device.measure, sys
sys.exit(device.measure.main([{str(artifact.path)!r}, "--out", {str(out)!r}, "--runs", "2", "--warmup", "1",
                             "--branch-runs", "1"]))
""")
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "device" and "level" in kinds and "branch" in kinds and "ops" in kinds and kinds[-1] == "memory"
    assert "torch" not in r.stderr


def test_native_runner_measures_a_pte_without_torch(bert_all_gates, tmp_path):
    """An ExecuTorch artifact is measured without torch through the native runner: the host side that
    drives it (profiler, the local target) imports no torch either (the operator profile, read with
    ExecuTorch's devtools Inspector, is left out: that reader imports torch)."""
    from profiler import native

    native.ensure()  # (built here, with torch at hand: the build is not what this test is about)
    _, _, artifact = bert_all_gates("executorch")
    r = _measure_without_torch(tmp_path, f"""
import json, profiler
report = profiler.profile({str(artifact.path)!r}, "local",
                          profiler.ProfileConfig(runs=2, warmup=1, branch_runs=1, ops=False, runner="native"),
                          progress=False)
print(json.dumps({{"levels": len(report["levels"]), "branches": len(report["branches"])}}))
""")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["levels"] >= 1 and got["branches"] >= 1
