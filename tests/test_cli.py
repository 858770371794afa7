"""The `edge` command end to end, on the real MiniLM and real Austen text, and its user errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edge
from edge.budget import KNOB

REPO = Path(__file__).resolve().parents[1]
FEW = ["--repr-steps", "2", "--gate-steps", "2", "--e2e-steps", "2", "--train-limit", "64",
       "--eval-limit", "64", "--calib-limit", "128", "--quiet"]


def _env() -> dict:
    """This checkout's code first (the command may run in another directory), whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def edge_cli(*args, cwd=None, module="edge_cli"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=_env(), timeout=600)


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
    r = edge_cli("eval", out, "--limit", "64", "--calib-limit", "128", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["cos_mean"] == pytest.approx(report["cos_mean"], abs=1e-5)
    # the whole knob of this one model: every budget set with the knob alone; at its own budget, the
    # knob gives back the model as converted (the same calibration)
    assert [k["budget"] for k in again["knob"]] == list(KNOB)
    assert all(k == pytest.approx(r, abs=1e-5) for k, r in zip(again["knob"], report["knob"]))
    own = next(k for k in again["knob"] if k["budget"] == 0.75)
    assert own["cos_mean"] == pytest.approx(again["cos_mean"], abs=1e-5)
    assert all(k["achieved"] <= k["budget"] + 0.05 for k in again["knob"] if k["budget"] < 1)
    top = next(k for k in again["knob"] if k["budget"] == 1.0)
    assert top["achieved"] > 1.0  # every learner on every token, and the gate
    assert "knob (set with the knob alone)" in r.stdout
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
    last = r.stdout.strip().splitlines()[-6:]
    assert "the native runner" in last[0] and "of the original's FLOPs" in last[1], last
    own, base = (float(line.split(": ")[-1].split(" ms")[0]) for line in last[1:3])
    assert last[3] == f"  time ratio {own / base:.2f}x"
    # and both models in int8 beside them, exported and measured the same way
    own_int8, base_int8 = (float(part.split(" ms")[0].split()[-1]) for part in last[4].split(", the original "))
    assert last[4].endswith(f"time ratio {own_int8 / base_int8:.2f}x") and last[5].endswith(f"{own_int8 / base:.2f}x"), last
    for name in ("minilm-acm-int8-executorch", "minilm-int8-executorch"):
        assert json.loads((out / name / "plan.json").read_text())["precision"] == "8da8w"
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


def tiny_acm_with_tokenizer(path):
    """A tiny random BERT with ACMs and MiniLM's tokenizer, saved to `path` as `edge export` reads it."""
    from transformers import AutoConfig, AutoModel

    _, tok = edge.load_pretrained()
    cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)
    model = AutoModel.from_config(cfg, attn_implementation="eager", add_pooling_layer=False).eval()
    edge.install_acms(model, edge.AcmConfig(learners=2))
    return edge.save(model, path, tokenizer=tok)


def test_ctrl_c_during_an_export_exits_130_and_writes_nothing(tmp_path):
    """Ctrl-C while the export lowers (inside executorch and torch, which may swallow it): exit 130,
    one line, and neither the output nor a temporary directory is left."""
    import signal
    import time

    src = tiny_acm_with_tokenizer(tmp_path / "acm")
    out = tmp_path / "exports" / "a"
    proc = subprocess.Popen([sys.executable, "-m", "edge_cli", "export", str(src), "--to", "executorch", "-o", str(out),
                             "--tokens", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            # (Ctrl-C's default action: a test run started in the background inherits SIGINT ignored,
                            # which the command then rightly keeps ignoring)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def test_moefy_then_eval_on_the_real_model(tmp_path):
    out = tmp_path / "moe"
    few = [a for i, a in enumerate(FEW) if a != "--repr-steps" and FEW[i - 1] != "--repr-steps"]
    r = edge_cli("moefy", "-o", out, "--budget", "0.5", "--experts", "8", "--mode", "topk", *few)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ffn_fraction"] <= 0.5 + 1e-6  # topk: the same K experts for every token, within the budget
    assert 0 <= report["acc"] <= 1 and -1 <= report["cos_p5"] <= report["cos_mean"] <= 1
    model = edge.load(out)
    assert edge.parts.parts(model).config("moe").mode == "topk"
    assert [len(h) for h in report["k_histogram"]] == [9] * 6  # 0..8 experts, six layers
    r = edge_cli("eval", out, "--limit", "64", "--calib-limit", "128", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["cos_mean"] == pytest.approx(report["cos_mean"], abs=1e-5)
    r = edge_cli("export", out, "--to", "onnx", "-o", tmp_path / "onnx", "--quiet")  # the graph mode, its default
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "onnx" / "plan.json").read_text())["mode"] == "graph"
    r = edge_cli("export", out, "--to", "onnx", "--mode", "routed", "-o", tmp_path / "routed", "--quiet")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "routed" / "plan.json").read_text())
    assert plan["mode"] == "routed" and sum(s["then"]["kind"] == "moe" for s in plan["routed"]["segments"]) == 6


@pytest.mark.parametrize("args,needle", [
    (["--experts", "7"], "not divisible by experts=7"),
    (["--budget", "0"], "MoeConfig.budget must be a number in (0, 1]"),
    (["--expert-dropout", "1"], "MoeConfig.expert_dropout must be a number in [0, 1)"),
    (["--mode", "all"], "invalid choice"),
])
def test_moefy_bad_input(tmp_path, args, needle):
    r = edge_cli("moefy", "-o", tmp_path / "moe", "--train-limit", "8", "--quiet", *args)
    assert_user_error(r, needle)
    assert list(tmp_path.iterdir()) == []


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


# --- the parser: its choices are the registries' ----------------------------------------------------
def _verbs(p, path=()):
    """(verb path, its parser) for every verb and nested verb of the argparse parser `p`."""
    import argparse

    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield (*path, name), sp
                yield from _verbs(sp, (*path, name))


def test_choices_come_from_the_registries():
    """Every option with a fixed list of choices takes exactly its registry's names (a runtime, a
    runner or an architecture registered later is a choice without touching the CLI), and the
    --target help names every registered target."""
    import export
    import profiler
    from edge_cli.commands import parser

    expected = {
        ("acmize", "init"): list(edge.INITS),
        ("acmize", "precision"): ["auto", *edge.PRECISIONS.names()],
        ("demo", "precision"): ["auto", *edge.PRECISIONS.names()],
        ("moefy", "precision"): ["auto", *edge.PRECISIONS.names()],
        ("moefy", "mode"): list(__import__("edge.moe").moe.MODES),
        ("add-skips", "target"): list(edge.SKIP_TARGETS),
        ("export", "to"): export.RUNTIMES.names(),
        ("export", "mode"): list(export.MODES),
        ("export", "quantize"): list(__import__("edge.quant").quant.SCHEMES),
        ("export", "quantize_cover"): list(__import__("edge.quant").quant.COVER),
        ("profile", "runner"): list(profiler.RUNNERS),
        ("preset choose", "runner"): list(profiler.RUNNERS),
        ("runner", "arch"): list(profiler.RUNNER_PLATFORMS),
        ("train", "task"): __import__("edge.tasks").tasks.task_names(),
    }
    found, target_helps = {}, []
    for path, p in _verbs(parser()):
        for a in p._actions:
            if a.choices is not None and a.dest not in ("command", "action"):
                found[(" ".join(path), a.dest)] = list(a.choices)
            if a.dest == "target" and a.choices is None:
                target_helps.append(a.help)
    assert found == expected
    assert len(target_helps) == 2  # profile, preset choose
    for h in target_helps:
        assert all(name in h for name in profiler.TARGETS.names()), h


def test_python_m_edge_is_the_same_command():
    r = edge_cli("--help", module="edge")
    assert r.returncode == 0 and "add-exits" in r.stdout and "set-budget" in r.stdout, r.stderr


# --- the adaptive-depth chain, from the shell ---------------------------------------------------------
def _tiny_bert_dir(path, layers=3):
    """A plain Hugging Face model directory: a tiny random BERT with MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from edge.pretrained import default_model_dir

    tok = AutoTokenizer.from_pretrained(str(default_model_dir()))
    cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModel.from_config(cfg, attn_implementation="eager").eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _labelled_files(tmp_path, per_class=40, novels=(0, 2, 5)):
    """text.txt and labels.txt: passages of three of Austen's novels, interleaved, labelled with the
    novel's name (what the novel task's head calls its classes)."""
    p = edge.austen_passages()
    rows = [(t, p.label_names[y]) for i in range(per_class) for y in novels
            for t in [[t for t, lab in zip(p.texts, p.labels) if lab == y][i]]]
    (tmp_path / "text.txt").write_text("".join(f"{t}\n" for t, _ in rows))
    (tmp_path / "labels.txt").write_text("".join(f"{n}\n" for _, n in rows))
    return tmp_path / "text.txt", tmp_path / "labels.txt"


def test_the_adaptive_depth_chain_from_the_shell(tmp_path):
    """What bench/depth.py measures, built from the shell on a tiny BERT: the novel task's head (a
    probe on the Austen passages, the default), exits that learn the labels of the user's own
    labelled passages, attention routers, the budget set; then exported to ONNX with two budget
    levels and profiled."""
    hf = _tiny_bert_dir(tmp_path / "hf")
    text, labels = _labelled_files(tmp_path)
    own = ["--text", text]
    steps = [("prune", hf, ["--flops", "0.8", "--multiple", "4", *own, "--quiet"]),  # (verb, its input, its options)
             ("add-head", tmp_path / "prune", []),  # each writes tmp_path/VERB
             ("add-exits", tmp_path / "add-head", ["--after", "1", "2", *own, "--labels", labels, "--quiet"]),
             ("add-skips", tmp_path / "add-exits", ["--layers", "2", "3", "--samples", "32", *own, "--quiet"]),
             ("set-budget", tmp_path / "add-skips", ["--budget", "0.7", *own, "--quiet"])]
    for verb, src, extra in steps:
        out = tmp_path / verb
        r = edge_cli(verb, src, "-o", out, *extra)
        assert r.returncode == 0, f"{verb}: {r.stderr}"
        assert f"wrote {out}/" in r.stdout
    meta = json.loads((tmp_path / "set-budget" / "edge.json").read_text())
    assert meta["head"]["labels"] == list(edge.austen_passages().label_names)
    assert len(meta["prune"]["ffn_widths"]) == len(meta["prune"]["kept_heads"]) >= 2 and meta["prune"]["flops"] == 0.8
    assert meta["exits"]["after"] == [1, 2] and meta["skips"]["layers"] == [2, 3]
    assert meta["base_model"] == str(hf) and meta["budget"]["flops_frac"] <= 0.7
    assert meta["exits"]["threshold"] == meta["budget"]["exit_threshold"]  # (the chosen knobs are saved)
    # an existing output is never replaced without --overwrite
    assert_user_error(edge_cli("add-skips", tmp_path / "add-exits", "-o", tmp_path / "add-skips"), "already exists")

    art = tmp_path / "onnx"
    r = edge_cli("export", tmp_path / "set-budget", "--to", "onnx", "--mode", "routed", "-o", art, "--tokens", "16",
                 "--budgets", "1", "0.5", "--calib", "16", *own, "--quiet")
    assert r.returncode == 0, r.stderr
    plan = json.loads((art / "plan.json").read_text())
    assert plan["model"]["output_kind"] == "logits"
    assert [e["after"] for e in plan["control_flow"]["exits"]] == [1, 2]
    assert [e["layer"] for e in plan["control_flow"]["routers"]] == [2, 3]
    r = edge_cli("profile", art, "--runs", "3", "--warmup", "0", "--branch-runs", "1", "--no-ops", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [lv["name"] for lv in report["levels"]] == ["budget 1", "budget 0.5"]
    assert all(lv["stats"]["n"] == 3 for lv in report["levels"])


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return _tiny_bert_dir(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.mark.parametrize("argv,needle", [
    (["add-exits", "{hf}", "--after", "3"], "this model has 3 layers"),  # (an exit goes after 1..L-1)
    (["add-exits", "{hf}", "--steps", "-1"], "ExitConfig.steps must be an integer >= 0"),
    (["add-exits", "{hf}", "--labels", "{labels}", "--text", "{text}"], "put the task's head on it first"),
    (["add-skips", "{hf}", "--skip-rate", "2"], "SkipConfig.skip_rate must be a number in [0, 1]"),
    (["set-budget", "{hf}", "--budget", "0"], "budget must be in (0, 1]"),
    (["prune", "{hf}", "--flops", "0"], "PruneConfig.flops must be a number in (0, 1]"),
    (["prune", "{hf}", "--no-heads", "--no-neurons"], "nothing could be pruned"),
    (["prune", "{hf}", "--flops", "0.01"], "below the smallest model pruning leaves"),
    (["prune", "{hf}", "--refit-sequences", "0"], "PruneConfig.refit_sequences must be an integer >= 1"),
    (["add-head", "{hf}", "--text", "{text}"], "labelled passages"),
    (["add-head", "{hf}", "--labels", "{labels}"], "pass the text file (--text) too"),
    (["add-head", "{hf}", "--text", "{text}", "--labels", "{short}"], "one label per line"),
])
def test_model_verbs_bad_input(tmp_path, tiny_hf, argv, needle):
    """The model verbs' user errors: one line, exit 2, no output; the configs and the library say what is wrong."""
    text, labels = _labelled_files(tmp_path, per_class=10)
    (tmp_path / "short.txt").write_text("emma\n" * 5)
    names = {"hf": tiny_hf, "text": text, "labels": labels, "short": tmp_path / "short.txt"}
    r = edge_cli(*[a.format(**names) for a in argv], "-o", tmp_path / "out")
    assert_user_error(r, needle)
    assert not (tmp_path / "out").exists()
