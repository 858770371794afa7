"""android_demo, what can be checked here (no Android SDK, no phone): the platform-free plan
interpreter compiled with javac and replayed against the Python driver on shared vectors (every
branch: exits taken, skips on and off, ACM k = 0..N, MoE bit masks, thresholds at equality), malformed plans failing
in one line, the Java artifact reader and WordPiece tokenizer on what `edge export` writes, and the
app's manifest and resources linked by aapt against Debian's android-framework-res."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import export
from device.schema import PLAN_VERSION
from tests.test_export import adaptive

DEMO = Path(__file__).parent.parent / "android_demo"
PLAN_SRC = DEMO / "plan" / "src"
FRAMEWORK = Path("/usr/share/android-framework-res/framework-res.apk")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    if shutil.which("javac") is None:
        pytest.skip("needs a JDK (javac)")
    out = tmp_path_factory.mktemp("classes")
    sources = sorted(map(str, PLAN_SRC.rglob("*.java")))
    # --release 8: the Java library the app can count on at minSdk 26 (no List.of, no Files.readString)
    done = subprocess.run(["javac", "--release", "8", "-Xlint:all", "-Werror", "-d", str(out), *sources],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def java(classes, main, *args, stdin=None):
    return subprocess.run(["java", "-cp", str(classes), f"org.edge.plan.{main}", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_java_interpreter_matches_python_on_shared_vectors(classes, shared_vectors):
    vs, directory = shared_vectors  # (tests/conftest.py: the native runner replays the same ones)
    done = java(classes, "VectorsTest", directory)
    assert done.returncode == 0, done.stderr[-2000:]
    got = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", done.stdout)}
    assert got["vectors"] == len(vs) >= 50 and got["exits_taken"] > 0 and got["skipping"] > 0 and got["malformed"] >= 8
    assert "k_seen=[0, 1, 2, 3, 4]" in done.stdout  # every k of the 2-learner ACMs and of the 4-learner ones
    assert got["moe_vectors"] > 0 and got["moe_masks"] >= 6  # the MoE's replayed: masks 0, 1, 2, 4, 8, 15 at least (forced)
    assert {v["case"] for v in vs} >= {"full", "skip all", "exit after 1", "gate bias -10000", "gate bias +10000"}
    assert any(c["method"].startswith("learner") for v in vs for c in v["calls"])
    assert any(c["method"].startswith("experts") for v in vs for c in v["calls"])
    assert any("threshold at its score" in v["case"] for v in vs)


def test_java_reads_what_edge_export_writes(classes, tmp_path):
    """The files the app opens: plan.json, model.pte, checks.safetensors and tokenizer/tokenizer.json,
    from a real export; the Java WordPiece tokenizer gives Hugging Face's ids on real text."""
    import edge
    from transformers import AutoTokenizer

    model, batch = adaptive(("bert", "bert"), exits=True)  # (few methods: a quick export)
    tok = AutoTokenizer.from_pretrained(str(edge.pretrained.default_model_dir()))
    a = export.to_runtime(model, "executorch", tmp_path / "a", batch, progress=False, tokenizer=tok)
    done = java(classes, "Artifact", a.path)
    assert done.returncode == 0, done.stderr
    assert "routed" in done.stdout and "tokenizer=true" in done.stdout and f"methods={len(a.plan['methods'])}" in done.stdout
    ids = a.inputs()[0][0].tolist()
    assert f"input_ids={ids}" in done.stdout  # the Java safetensors reader read the bundled example input
    texts = [t.replace("\n", " ") for t in edge.austen_passages().split("test").texts[:200]]
    texts += ["Café naïve résumé — “quoted” 東京\tend", "x" * 150, "!!?", ""]
    done = java(classes, "Tokenizer", a.path / "tokenizer" / "tokenizer.json", 128, stdin="\n".join(texts) + "\n")
    assert done.returncode == 0, done.stderr
    got = [list(map(int, line.split())) for line in done.stdout.splitlines()]
    want = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    assert got == want
    plan = (a.path / "plan.json").read_text()
    for text, needle in [(plan.replace('"runtime": "executorch"', '"runtime": "onnx"'), "the app runs ExecuTorch artifacts"),
                         ('{"format": "edge-plan", "version": 1}', f"this app reads version {PLAN_VERSION}"),
                         (plan[:100], "malformed JSON")]:
        (a.path / "plan.json").write_text(text)
        done = java(classes, "Artifact", a.path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
    (a.path / "plan.json").write_text(plan)
    (a.path / "model.pte").unlink()
    done = java(classes, "Artifact", a.path)
    assert done.returncode == 1 and "model.pte is missing" in done.stderr


def test_java_reads_a_quantized_artifact(classes, tmp_path):
    """An int8 program is opened as any other (the plan states its precision and tolerance; the program
    computes the quantization)."""
    import edge

    model, batch = adaptive(("bert", "bert"), exits=True)
    a = export.to_runtime(edge.quantize(model), "executorch", tmp_path / "a", batch, progress=False)
    done = java(classes, "Artifact", a.path)
    assert done.returncode == 0, done.stderr
    assert "routed precision=8da8w" in done.stdout and f"methods={len(a.plan['methods'])}" in done.stdout


@pytest.mark.skipif(shutil.which("aapt") is None or not FRAMEWORK.is_file(),
                    reason="needs aapt and android-framework-res (setup.sh installs them as root)")
def test_manifest_and_resources_link_against_the_android_framework(tmp_path):
    app = DEMO / "app" / "src" / "main"

    def link(res: Path):
        return subprocess.run(["aapt", "package", "-f", "-M", str(app / "AndroidManifest.xml"), "-S", str(res),
                               "-I", str(FRAMEWORK), "-F", str(tmp_path / "res.apk"), "-J", str(tmp_path / "gen")],
                              capture_output=True, text=True, timeout=120)

    (tmp_path / "gen").mkdir()
    done = link(app / "res")
    assert done.returncode == 0, done.stderr
    r_java = next((tmp_path / "gen").rglob("R.java")).read_text()
    assert "package org.edge.demo;" in r_java
    used = set(re.findall(r"(?<!android\.)\bR\.(?:id|layout|array)\.(\w+)", (app / "java/org/edge/demo/MainActivity.java").read_text()))
    assert used and all(re.search(rf"\b{name}\b", r_java) for name in used)  # every resource the code names exists
    broken = tmp_path / "res"
    shutil.copytree(app / "res", broken)
    layout = broken / "layout" / "activity_main.xml"
    layout.write_text(layout.read_text().replace("@string/search", "@string/no_such_string"))
    done = link(broken)
    assert done.returncode != 0 and "no_such_string" in done.stderr
