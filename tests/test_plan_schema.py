"""The plan format defined once, in device/plan.schema.json: every plan the exporter writes (both modes,
every runtime) matches it, a changed plan fails in one line naming its JSON path, the Python, C++ and
Java drivers read the schema's version, and the native runner replays the shared vectors (the ones
the Java interpreter replays) to the Python driver's decisions, thresholds at equality included."""
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import device.artifact
import export
from device.schema import PLAN_VERSION, SCHEMA_FILE, schema, validate
from edge.errors import EdgeError
from export import vectors
from device.artifact import DTYPES, NAME, PLAN, PLAN_FORMAT, TOKENIZER, check_plan
from export.artifact import write_plan
from tests.test_export import adaptive

ROOT = Path(__file__).parent.parent
RUNNER_SOURCE = ROOT / "profiler" / "runner" / "edge_runner.cpp"
JAVA_PLAN = ROOT / "android_demo" / "plan" / "src" / "main" / "java" / "org" / "edge" / "plan" / "Plan.java"


@pytest.fixture(scope="module", params=export.RUNTIMES.names())
def artifact(request, bert_all_gates):
    """The tiny bert with every gate, exported once a session per runtime in its default mode (tests/conftest.py)."""
    return bert_all_gates(request.param)[2]


def written(a) -> dict:
    return json.loads((a.path / PLAN).read_text())


def test_every_exported_plan_matches_the_schema(artifact):
    plan = written(artifact)
    validate(plan)
    check_plan(plan)  # (the hand-written check a device runs agrees)
    assert plan["version"] == PLAN_VERSION and plan["mode"] == export.RUNTIMES.get(plan["runtime"]).mode


@pytest.mark.parametrize("runtime", ["onnx", "executorch"])
def test_the_other_mode_matches_the_schema_too(runtime, tmp_path):
    """The mode each runtime does not export by default (onnx: routed, executorch: graph), with a
    tokenizer (its files are listed under tokenizer/): write_plan validated it, and it reads back valid."""
    import edge
    from transformers import AutoTokenizer

    model, batch = adaptive(("bert", "bert"), exits=True)  # (few methods: a quick export)
    mode = next(m for m in export.MODES if m != export.RUNTIMES.get(runtime).mode)
    tok = AutoTokenizer.from_pretrained(str(edge.pretrained.default_model_dir()))
    a = export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode=mode, tokenizer=tok)
    plan = written(a)
    assert plan["mode"] == mode and plan["tokenizer"] == TOKENIZER and any(f.startswith(f"{TOKENIZER}/") for f in plan["files"])
    validate(plan)


def _then(p):
    return p["routed"]["segments"][0]["then"]


def _method_calls(p, name):
    p["methods"][name] = next(iter(p["methods"].values()))


# (what to change, the JSON path the error names, a word of its message); "routed": on a routed plan
CHANGES = {
    "unknown key": (lambda p: p.update(colour="red"), "$", "'colour' was unexpected"),
    "unknown key in a decision": (lambda p: _then(p).update(teleport=1), "$.routed.segments[0].then", "key 'teleport' is not one of"),
    "a key of another decision": (lambda p: _then(p).update(next=1), "$.routed.segments[0].then", "key 'next' is not one of"),
    "unknown decision": (lambda p: _then(p).update(kind="teleport"), "$.routed.segments[0].then.kind", "'teleport'"),
    "wrong version": (lambda p: p.update(version=PLAN_VERSION + 1), "$.version", str(PLAN_VERSION)),
    "wrong format": (lambda p: p.update(format="onnx"), "$.format", "edge-plan"),
    "a method name that is a path": (lambda p: _method_calls(p, "../evil"), "$.methods", "key '../evil' does not match"),
    "a file name that is a path": (lambda p: p["files"].update({"sub/x.bin": "0" * 64}), "$.files", "key 'sub/x.bin'"),
    "a tensor name with a space": (lambda p: p["inputs"][0].update(name="input ids"), "$.inputs[0].name", "input ids"),
    "a segment input with '..'": (lambda p: p["routed"]["segments"][1]["inputs"].insert(0, "a..b"), "$.routed.segments[1].inputs[0]", "'a..b'"),
    "missing field": (lambda p: p["model"].pop("layers"), "$.model", "'layers' is a required property"),
    "missing section": (lambda p: p.pop("routed"), "$", "'routed' is a required property"),
    "a dynamic size without bounds": (lambda p: p["inputs"][0].pop("max"), "$.inputs[0]", "'max' is a required property"),
    "a count that is not an integer": (lambda p: _then(p).update(router=0.5), "$.routed.segments[0].then.router", "integer"),
    "a digest that is not SHA-256": (lambda p: p.update(plan_sha256="abc"), "$.plan_sha256", "abc"),
    "an unknown knob": (lambda p: p["knobs"][0].update(name="speed"), "$.knobs[0].name", "speed"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_plan_fails_in_one_line_naming_its_path(bert_all_gates, change, tmp_path):
    plan = written(bert_all_gates("executorch")[2])  # (the routed mode)
    assert plan["mode"] == "routed"
    edit, path, needle = CHANGES[change]
    bad = copy.deepcopy(plan)
    edit(bad)
    with pytest.raises(EdgeError) as e:
        validate(bad)
    message = str(e.value)
    assert "\n" not in message and f"plan.schema.json at {path}: " in message and needle in message, message
    if path != "$.plan_sha256":  # (the writer stamps its own digest)
        with pytest.raises(EdgeError, match=re.escape(f" at {path}: ")):  # the writer refuses it, writing nothing
            write_plan(tmp_path, bad)
        assert not (tmp_path / PLAN).exists()


def test_a_graph_plan_needs_forward_and_no_routed_section(bert_all_gates):
    plan = written(bert_all_gates("onnx")[2])
    assert plan["mode"] == "graph"
    no_forward = {**plan, "methods": {"main": plan["methods"]["forward"]}}
    with pytest.raises(EdgeError, match=re.escape("at $.methods: 'forward' is a required property")):
        validate(no_forward)
    with pytest.raises(EdgeError, match=re.escape("at $: key 'routed' should not be valid")):
        validate({**plan, "routed": {"segments": [], "acms": 0}})


def test_every_driver_reads_the_schemas_version_and_names():
    """One definition: Python imports the version from the schema; the C++ runner and the Java
    interpreter hard-code it (they read no JSON Schema), so their constants are compared with it here,
    and the schema's name patterns are device/artifact.py's NAME."""
    s = schema()
    assert SCHEMA_FILE == ROOT / "device" / "plan.schema.json"
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(s)
    assert device.artifact.PLAN_VERSION is PLAN_VERSION == s["properties"]["version"]["const"]
    assert s["properties"]["format"]["const"] == PLAN_FORMAT
    assert s["$defs"]["name"]["pattern"] == f"^{NAME.pattern}$"
    assert s["$defs"]["file"]["pattern"] == f"^({TOKENIZER}/)?{NAME.pattern}$"
    assert s["properties"]["tokenizer"]["const"] == TOKENIZER
    assert s["$defs"]["spec"]["properties"]["dtype"]["enum"] == list(DTYPES)
    cpp = RUNNER_SOURCE.read_text()
    assert re.findall(r"constexpr long kPlanVersion = (\d+);", cpp) == [str(PLAN_VERSION)]
    assert "!= kPlanVersion" in cpp and not re.search(r"\"version\"\]\.\w+\(?\)? != \d", cpp)  # (compared through it only)
    java = JAVA_PLAN.read_text()
    assert re.findall(r"public static final int VERSION = (\d+);", java) == [str(PLAN_VERSION)]
    assert re.findall(r'public static final String FORMAT = "([^"]+)";', java) == [PLAN_FORMAT]


# ---- the native runner replays the shared vectors --------------------------------------------------------
@pytest.fixture(scope="module")
def runner():
    """The native runner, built once per source (profiler.native.ensure, as tests/test_profiler.py uses it)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (setup.sh installs it)")
    from profiler import native

    return native.ensure()


def replay(runner, directory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    done = subprocess.run([str(runner), "--replay", str(directory)], capture_output=True, text=True, timeout=300)
    return done, [json.loads(line) for line in done.stdout.splitlines()]


def decisions(v: dict) -> dict:
    """The Python driver's decisions on a vector, as the runner prints its own."""
    want = v["expected"]
    ks = want.get("ks")
    return {"exit_layer": want["exit_layer"]["data"][0], "skipped": want["skipped"]["data"],
            "ks": np.array(ks["data"], dtype=np.int64).reshape(ks["shape"]).tolist() if ks else None}


def test_native_runner_replays_the_shared_vectors_to_pythons_decisions(runner, shared_vectors):
    """Every vector the Java interpreter replays (test_android_demo), through the C++ driver: the same
    method calls with the same arrays, and the same outputs and decisions as Python's drive."""
    vs, directory = shared_vectors
    done, records = replay(runner, directory)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    *per_vector, summary = records
    routes = sorted({k for v in vs if "ks" in v["expected"] for k in v["expected"]["ks"]["data"] if k >= 0})
    assert {0, 1, 2, 3, 4, 8, 15} <= set(routes)  # ACMs of 2 and 4 learners; a MoE's 4 experts: none, each alone, all
    assert summary == {"kind": "replay", "vectors": len(vs), "matched": len(vs), "calls": sum(len(v["calls"]) for v in vs),
                       "exits_taken": summary["exits_taken"], "skipping": summary["skipping"], "k_seen": routes}
    assert summary["exits_taken"] > 0 and summary["skipping"] > 0
    assert [r["file"] for r in per_vector] == [f"vector{i:03d}.json" for i in range(len(vs))]  # (export.vectors.write)
    for v, r in zip(vs, per_vector):
        assert r["match"] and r["name"] == v["name"], r
        assert {k: r[k] for k in ("exit_layer", "skipped", "ks")} == decisions(v), v["name"]


def test_a_threshold_equal_to_its_score_decides_alike_everywhere(runner, shared_vectors, tmp_path):
    """The tie rule: a score equal to its threshold exits (exit) and keeps the layer (skip router),
    `>=` in Python's drive, in the C++ runner and in Java (the same vectors). One float32 step above
    the score the decision flips: the replay then fails where the drivers part."""
    vs, _ = shared_vectors
    ties = [v for v in vs if "threshold at its score" in v["case"]]
    assert {v["case"].split()[0] for v in ties} == {"exit", "skip"}
    for v in ties:
        layer = int(v["case"].rsplit(" ", 1)[1])
        got = decisions(v)
        if v["case"].startswith("exit"):
            assert got["exit_layer"] == layer, v["name"]  # (exited there)
        else:
            assert got["skipped"][layer - 1] is False, v["name"]  # (kept the layer)
    tie = next(v for v in ties if v["case"].startswith("exit"))
    knobs = dict(tie["knobs"])
    step = np.nextafter(np.float32(knobs["exit_thresholds"][0]), np.float32(np.inf))
    knobs["exit_thresholds"] = [float(step)] + knobs["exit_thresholds"][1:]
    vectors.write([tie], tmp_path / "at")
    vectors.write([{**tie, "knobs": knobs}], tmp_path / "above")
    done, records = replay(runner, tmp_path / "at")
    assert done.returncode == 0 and records[0]["match"] and records[0]["exit_layer"] == decisions(tie)["exit_layer"]
    done, records = replay(runner, tmp_path / "above")
    assert done.returncode == 1 and not records[0]["match"] and "after the Python driver had stopped" in records[0]["error"]
    assert records[-1]["matched"] == 0


def test_the_replay_mode_faults_in_one_line(runner, tmp_path):
    done, records = replay(runner, tmp_path / "none")
    assert done.returncode == 2 and records == [{"kind": "error", "message": f"{tmp_path / 'none'} is not a directory "
                                                 "of test vectors (export/vectors.py writes them)"}]
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vector000.json").write_text(json.dumps({"name": "old", "plan": {"format": PLAN_FORMAT, "version": 1}}))
    done, records = replay(runner, tmp_path / "v")
    assert done.returncode == 1 and not records[0]["match"]
    assert f"plan version this runner does not read (it reads {PLAN_VERSION})" in records[0]["error"]
    assert subprocess.run([str(runner), "--replay"], capture_output=True, timeout=60).returncode == 64


def test_the_device_side_needs_no_jsonschema(artifact):
    """Loading and checking an artifact (what runs on a board) reads the version from the schema file
    with the standard library; only validate imports jsonschema, and says so when it is absent."""
    code = ("import sys; sys.modules['jsonschema'] = None\n"  # (an import of it now fails)
            "from device.artifact import load_artifact\n"
            "from device.schema import validate\n"
            f"a = load_artifact({str(artifact.path)!r})\n"
            "try:\n    validate(a.plan)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("EdgeError checking a plan against its schema needs the jsonschema package")
