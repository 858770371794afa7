"""The `edge` command end to end, on the real MiniLM and real Austen text, and its user errors."""
import json
import subprocess
import sys

import pytest
import torch

import edge

FEW = ["--repr-steps", "2", "--gate-steps", "2", "--e2e-steps", "2", "--train-limit", "64",
       "--eval-limit", "64", "--calib-limit", "128", "--quiet"]


def edge_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def assert_user_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge: error:"), r.stderr
    for n in needles:
        assert n in lines[0]


def test_acmize_then_eval_on_the_real_model(tmp_path):
    out = tmp_path / "acm"
    r = edge_cli("acmize", "-o", out, "--budget", "0.75", "--freeze-backbone", *FEW)
    assert r.returncode == 0, r.stderr
    # --freeze-backbone: phase 3 left everything but the ACMs as it was (by default it tunes the rest:
    # tests/test_convert.py)
    original, acm = edge.load_pretrained()[0].state_dict(), edge.load(out).state_dict()
    assert all(torch.equal(original[k], acm[k]) for k in original if k in acm)
    assert sum(k in acm for k in original) > 50
    report = json.loads((out / "report.json").read_text())
    assert report["ffn_fraction"] <= 0.75 + 0.05  # calibrated on calib data, measured on held-out
    assert 0 < report["model_fraction"] < 1 and 0.5 < report["ffn_share_of_model"] < 0.8
    assert -1 <= report["cos_p5"] <= report["cos_mean"] <= 1
    assert 0 <= report["acc"] <= 1 and 0 <= report["acc_teacher"] <= 1
    r = edge_cli("eval", out, "--limit", "64", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["cos_mean"] == pytest.approx(report["cos_mean"], abs=1e-5)
    # an existing output is never overwritten by accident
    r = edge_cli("acmize", "-o", out, *FEW)
    assert_user_error(r, "already exists")
    # the converted model exports with its ACM routing, checked on every branch in ONNX Runtime
    r = edge_cli("export", out, "--to", "onnx", "-o", tmp_path / "onnx", "--tokens", "32", "--quiet")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "onnx" / "plan.json").read_text())
    assert len(plan["control_flow"]["acms"]) == 6 and plan["inputs"][0]["shape"] == [1, "tokens"]
    r = edge_cli("export", out, "--to", "onnx", "-o", tmp_path / "onnx", "--quiet")
    assert_user_error(r, "already exists")
    # a preset chosen for it from measurements: latency here, quality on held-out passages
    presets = tmp_path / "presets"
    r = edge_cli("preset", "choose", tmp_path / "onnx", "--budget-ms", "1e4", "--runs", "3", "--texts", "4",
                 "-o", presets / "p.yaml", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (presets / "p.png").is_file() and "<- chosen" in r.stdout
    r = edge_cli("preset", "list", presets)
    assert r.returncode == 0 and "bert-onnx-local-10000ms" in r.stdout
    r = edge_cli("preset", "show", presets / "p.yaml")
    assert r.returncode == 0 and "level: exported" in r.stdout and "quality_metric: cos_to_full" in r.stdout
    assert_user_error(edge_cli("preset", "show", tmp_path / "none.yaml"), "no such preset file")
    assert_user_error(edge_cli("preset", "choose", tmp_path / "onnx", "--budget-ms", "1e4", "-o", presets / "p.yaml"),
                      "already exists")


def test_demo_runs_the_whole_path(tmp_path):
    """The README's main command, as a user runs it: from their own working directory, with RELATIVE
    paths (the measuring process runs elsewhere): convert, export with the ACM routing kept, measure
    on this CPU with the native runner, and end with the time ratio against the original."""
    cwd = tmp_path / "user"
    cwd.mkdir()
    r = edge_cli("demo", "-o", "out/minilm-acm", *FEW, "--runs", "3", cwd=cwd)
    assert r.returncode == 0, r.stderr
    out = cwd / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"] and sorted(p.name for p in cwd.iterdir()) == ["out"]
    assert json.loads((out / "minilm-acm" / "report.json").read_text())["ffn_fraction"] <= 0.5 + 0.05
    plan = json.loads((out / "minilm-acm-executorch" / "plan.json").read_text())
    assert (plan["runtime"], plan["mode"], len(plan["control_flow"]["acms"])) == ("executorch", "routed", 6)
    report = json.loads((out / "minilm-acm-profile" / "report.json").read_text())
    assert report["complete"] and [lv["name"] for lv in report["levels"]] == ["exported"]
    assert report["config"]["runner"] == "native"  # what a board or a phone runs
    assert all(b["outputs_match"] for b in report["branches"])  # (the native runner checks every branch)
    fractions = [b["branch"]["acm_fraction"] for b in report["branches"]]
    assert min(fractions) == 0.0 and max(fractions) == 1.0  # the profile forced every learner and none
    assert "exported" in r.stdout and "per branch" in r.stdout
    assert (out / "minilm-executorch" / "model.pte").is_file()
    # it ends with its headline: the converted model's p50 against the original's, on the native runner
    last = r.stdout.strip().splitlines()[-4:]
    assert "the native runner" in last[0] and "of the original's FLOPs" in last[1], last
    own, base = (float(line.split(": ")[-1].split(" ms")[0]) for line in last[1:3])
    assert last[3] == f"  time ratio {own / base:.2f}x"
    # other libraries' warnings are not in edge's output (they are in its log)
    assert "Warning" not in r.stdout + r.stderr and "cpuinfo" not in r.stdout + r.stderr
    assert "DEPRECATION" not in r.stdout + r.stderr
    # the same artifact profiled and a preset chosen from another directory, by relative paths
    r = edge_cli("profile", "out/minilm-acm-executorch", "--runs", "2", "--no-ops", "--quiet", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["levels"][0]["stats"]["n"] == 2
    r = edge_cli("preset", "choose", "out/minilm-acm-executorch", "--budget-ms", "1e4", "--runs", "2", "--texts", "2",
                 "--quiet", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert (cwd / "profiles" / "bert-executorch-local-10000ms.yaml").is_file()
    # a bad measurement option fails before the training, and writes nothing
    assert_user_error(edge_cli("demo", "-o", tmp_path / "bad", "--runs", "0"), "runs must be an integer >= 1")
    assert not (tmp_path / "bad").exists()


def test_ctrl_c_during_an_export_exits_130_and_writes_nothing(tmp_path):
    """Ctrl-C while the export lowers (inside executorch and torch, which may swallow it): exit 130,
    one line, and neither the output nor a temporary directory is left."""
    import signal
    import time

    from transformers import AutoConfig, AutoModel

    _, tok = edge.load_pretrained()
    cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    model = AutoModel.from_config(cfg, attn_implementation="eager", add_pooling_layer=False).eval()
    edge.install_acms(model, edge.AcmConfig(learners=2))
    src = edge.save(model, tmp_path / "acm", tokenizer=tok)
    out = tmp_path / "exports" / "a"
    proc = subprocess.Popen([sys.executable, "-m", "edge", "export", str(src), "--to", "executorch", "-o", str(out),
                             "--tokens", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # interrupted while lowering (inside executorch), not before it starts
        if "lowering" in line:
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (rest, err)
    assert [line for line in err.splitlines() if line.strip()] == ["edge: interrupted; nothing was written"]
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []


def test_export_bad_input(tmp_path):
    import edge
    from tests.test_acm import tiny_acm_model

    r = edge_cli("export", tmp_path / "missing", "--to", "onnx", "-o", tmp_path / "out")
    assert_user_error(r, "not a directory")
    path = edge.save(tiny_acm_model("bert", "bert")[1], tmp_path / "acm")  # saved without a tokenizer
    r = edge_cli("export", path, "--to", "onnx", "-o", tmp_path / "out")
    assert_user_error(r, "has no tokenizer that matches")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,needle", [
    (["--budget", "1.5"], "AcmConfig.budget must be a number in (0, 1]"),
    (["--budget", "0"], "AcmConfig.budget must be a number in (0, 1]"),
    (["--learners", "0"], "AcmConfig.learners must be an integer >= 1"),
    (["--gate-hidden", "0"], "gate_hidden must be an integer >= 1"),
    (["--calib-limit", "0"], "--calib-limit: must be an integer >= 1"),
    (["--text", "/nonexistent/passages.txt"], "not found"),
    (["/nonexistent/model"], "not found"),
])
def test_acmize_bad_input(tmp_path, args, needle):
    out = tmp_path / "acm"
    r = edge_cli("acmize", "-o", out, *FEW, *args)
    assert_user_error(r, needle)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unsupported_architecture(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2}))
    r = edge_cli("acmize", d, "-o", tmp_path / "out", *FEW)
    assert_user_error(r, "unsupported architecture 'gpt2'", "supported: bert")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path):
    import edge
    from tests.test_acm import tiny_acm_model

    _, model, _, _ = tiny_acm_model("bert", "bert")
    path = edge.save(model, tmp_path / "acm")
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    r = edge_cli("eval", path, "--limit", "8")
    assert_user_error(r, "corrupt")
    r = edge_cli("eval", tmp_path / "missing")
    assert_user_error(r, "not a directory")
