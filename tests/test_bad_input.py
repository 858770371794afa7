"""Hostile and malformed input to the `edge` command, run as a user runs it (a subprocess per case).

Every case asserts the CLI's contract for a user error (README "CLI"): exit code 2, ONE non-empty
line on stderr that starts with `edge: error:` and names the problem, no traceback anywhere, and
nothing created, changed or removed in the case's sandbox (tmp_path: `work/`, the working directory,
and `outside/`, a directory with a sentinel that path-escape attempts aim at) nor in the repository's
profiles/. The expensive inputs (a tiny BERT with ACMs saved by edge.save with a tokenizer that fits
its vocabulary, its ONNX artifacts, a preset) are built once per session; a case copies what it
corrupts into its own sandbox.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
# acmize with next to no training (tests/test_cli.py's FEW): only failing cases run it
FEW = ["--repr-steps", "2", "--gate-steps", "2", "--e2e-steps", "2", "--train-limit", "64",
       "--eval-limit", "64", "--calib-limit", "128", "--quiet"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
         + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list(".,;:!?'\"-"))
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


# --- the session's inputs ---------------------------------------------------------------------------

def _tokenizer():
    """A WordPiece tokenizer over VOCAB (letters and ##letters): every text fits the tiny vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]", max_input_chars_per_word=100))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                     special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def _tiny_bert(hidden=32, positions=128, seed=0, pooler=False):
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("bert", vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=positions)
    return AutoModel.from_config(cfg, attn_implementation="eager", add_pooling_layer=pooler).eval()


def _edge_cli(args, cwd, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _env(**extra):
    env = dict(os.environ)
    # the sandbox is the working directory: this checkout's code, not whatever `edge` is installed
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def build_inputs(root: Path) -> None:
    """hf/: a tiny Hugging Face BERT directory (safetensors + tokenizer); hf16/: the same with 16
    positions; hf_h16/: hidden size 16; model/: hf's BERT with ACMs (edge.save, tokenizer, base_model
    hf/); art/: its ONNX artifact (graph mode, 16 tokens), art_routed/: routed mode; preset.yaml: a
    valid preset of art/."""
    import edge

    tok = _tokenizer()
    for name, kw in (("hf", {}), ("hf16", dict(positions=16)), ("hf_h16", dict(hidden=16))):
        m = _tiny_bert(pooler=True, **kw)  # (as AutoModel loads it: nothing missing)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    model = _tiny_bert()
    edge.install_acms(model, edge.AcmConfig(learners=2))
    edge.save(model, root / "model", tokenizer=tok, extra={"base_model": str(root / "hf")})
    for art, mode in (("art", "graph"), ("art_routed", "routed")):
        r = _edge_cli(["export", root / "model", "--to", "onnx", "--mode", mode, "-o", root / art, "--tokens", "16",
                       "--quiet"], cwd=root, env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
    r = _edge_cli(["preset", "choose", root / "art", "--budget-ms", "1e4", "--runs", "2", "--texts", "4", "-o",
                   root / "preset.yaml", "--quiet"], cwd=root, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, worker_id) -> Path:
    """The directory of build_inputs, built ONCE per session for all xdist workers (under a file lock)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    out = root / "bad-input-fixtures"
    with FileLock(f"{out}.lock"):
        if not (out / "done").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build_inputs(out)
            (out / "done").write_text("")
    return out


# --- one case's sandbox -----------------------------------------------------------------------------

class Sandbox:
    """root/work (the working directory), root/outside (with a sentinel), the session's inputs `fx`,
    the environment of the command (`env`) and helpers to copy and corrupt inputs."""

    def __init__(self, root: Path, fx: Path):
        self.root, self.fx = root, fx
        self.work, self.outside = root / "work", root / "outside"
        self.work.mkdir()
        self.outside.mkdir()
        (self.outside / "sentinel.txt").write_text("do not touch\n")
        self.env = _env()
        self.cleanup: list[Path] = []  # paths outside the sandbox a case names (removed after it)

    def copy(self, name: str, as_: str | None = None) -> Path:
        src, dst = self.fx / name, self.work / (as_ or name)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst, symlinks=True)
        return dst

    def file(self, rel: str, data: bytes | str) -> Path:
        p = self.work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return p

    def art(self, edit: Callable[[dict], None] | None = None, name: str = "art", resign: bool = True) -> Path:
        """A copy of an artifact; edit(plan) changes its plan.json in place. resign: record the edited
        plan's own digest too (as a hostile artifact would), so that what is checked behind the digest
        is what refuses it."""
        a = self.copy(name)
        if edit:
            plan = json.loads((a / "plan.json").read_text())
            edit(plan)
            if resign and PLAN_DIGEST in plan:
                plan[PLAN_DIGEST] = plan_sha256(plan)
            (a / "plan.json").write_text(json.dumps(plan, indent=2))
        return a

    def fake_ssh(self) -> None:
        """An `ssh` first on PATH that leaves work/../ssh-ran behind: a target refused before ssh runs
        leaves nothing."""
        b = self.root / "bin"
        b.mkdir()
        (b / "ssh").write_text(f"#!/bin/sh\ntouch '{self.root}/ssh-ran'\necho 'ssh: fake, not connecting' >&2\nexit 255\n")
        (b / "ssh").chmod(0o755)
        self.env["PATH"] = f"{b}{os.pathsep}{self.env.get('PATH', '')}"

    def model(self, name: str = "model", edit_meta: Callable[[dict], None] | None = None) -> Path:
        m = self.copy(name)
        if edit_meta:
            meta = json.loads((m / "edge.json").read_text())
            edit_meta(meta)
            (m / "edge.json").write_text(json.dumps(meta))
        return m

    def data(self, novels) -> Path:
        """EDGE_DATA: a data directory in the sandbox whose austen.json holds `novels` (bytes: as is)."""
        d = self.work / "data"
        d.mkdir()
        (d / "austen.json").write_bytes(novels if isinstance(novels, bytes) else json.dumps(novels).encode())
        self.env["EDGE_DATA"] = str(d)
        return d

    def preset(self, text: str | bytes, name: str = "p.yaml") -> Path:
        return self.file(name, text)

    def preset_fields(self) -> dict:
        import yaml

        return yaml.safe_load((self.fx / "preset.yaml").read_text())


PLAN_DIGEST = "plan_sha256"  # plan.json's own digest (of the plan without it, canonical JSON), where a plan has one


def plan_sha256(plan: dict) -> str:
    body = {k: v for k, v in plan.items() if k != PLAN_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(root: Path) -> dict:
    """Every path under root (symlinks not followed): its type, and for files and links the size,
    mtime and mode. (A directory's own mtime is left out: a temporary file made and removed again
    changes it, and leaves nothing.)"""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            out[str(p.relative_to(root))] = ((kind,) if stat.S_ISDIR(st.st_mode)
                                             else (kind, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)))
    return out


def diff(before: dict, after: dict) -> list[str]:
    return sorted([f"+ {p}" for p in after.keys() - before.keys()] + [f"- {p}" for p in before.keys() - after.keys()]
                  + [f"~ {p}" for p in before.keys() & after.keys() if before[p] != after[p]])


# --- the cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """setup(sandbox) -> the command line after `edge`. needles: strings, one of which the error line
    must hold (compared lowercase), or tuples of such alternatives, each of which must match. may_succeed: fnmatch
    patterns of sandbox paths a SUCCESSFUL run may create or change (exit 0 is then accepted too);
    ok(sandbox): what a successful run must also satisfy."""

    setup: Callable
    needles: tuple = ()
    may_succeed: tuple | None = None
    ok: Callable | None = None
    timeout: int = 300


P = pytest.param
ART_ERR = ("plan", "artifact", "export it again", "does not match", "changed")  # a plan refused as a whole


def _set(path: str, value):
    """An edit of plan.json: set the value at a dotted path (list indices as numbers)."""
    def edit(plan):
        *head, last = path.split(".")
        d = plan
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return edit


def _delete(key: str):
    return lambda plan: plan.pop(key)


def _profile(edit=None, *extra, art="art"):
    return lambda s: ["profile", s.art(edit, art), "--runs", "2", "--warmup", "0", "--no-ops", "--quiet", *extra]


def _choose(edit=None, *extra, art="art"):
    return lambda s: ["preset", "choose", s.art(edit, art), "--budget-ms", "1e4", "--runs", "2", "--texts", "4",
                      "-o", s.work / "p" / "p.yaml", "--quiet", *extra]


def _plan_escape_type(value_of):
    """model.type set to a path (value_of(sandbox)), preset choose WITHOUT -o (the default name is made from it)."""
    def setup(s):
        a = s.art(_set("model.type", value_of(s)))
        return ["preset", "choose", a, "--budget-ms", "1e4", "--runs", "2", "--texts", "4", "--quiet"]
    return setup


def _tmp_abs(s):
    p = f"/tmp/edge-bad-input-abs-{uuid.uuid4().hex[:12]}-X"
    s.cleanup += [Path(f"{p}-onnx-local-10000ms.yaml"), Path(f"{p}-onnx-local-10000ms.png")]
    return p


def _method_outside(s):
    """The graph's program routed to ../../outside/evil.onnx (a real copy of it, its hash in `files`)."""
    evil = s.outside / "evil.onnx"
    shutil.copy2(s.fx / "art" / "model.onnx", evil)

    def edit(plan):
        plan["methods"]["forward"] = "../../outside/evil.onnx"
        plan["files"]["../../outside/evil.onnx"] = sha256(evil)
        del plan["files"]["model.onnx"]
    return edit


def _files_passwd(plan):
    plan["files"]["/etc/passwd"] = sha256(Path("/etc/passwd"))


def _files_sentinel(s):
    def edit(plan):
        plan["files"]["../../outside/sentinel.txt"] = sha256(s.outside / "sentinel.txt")
    return edit


def _method_named(name):
    def edit(plan):
        plan["methods"] = {name: f for f in plan["methods"].values()}
    return edit


def _routed_method_named(name):
    """The first segment's method renamed (in "methods" and in the segment) in the routed artifact."""
    def edit(plan):
        seg = plan["routed"]["segments"][0]
        old = seg["method"]
        plan["methods"][name] = plan["methods"].pop(old)
        for sg in plan["routed"]["segments"]:
            if sg["method"] == old:
                sg["method"] = name
    return edit


def _nan_level(plan):
    plan["budget_levels"][0]["gate_bias"] = [float("nan")] * len(plan["budget_levels"][0]["gate_bias"])


def _symlink_program(s):
    a = s.art()
    shutil.copy2(a / "model.onnx", s.outside / "model.onnx")
    (a / "model.onnx").unlink()
    (a / "model.onnx").symlink_to(s.outside / "model.onnx")
    return ["profile", a, "--runs", "2", "--warmup", "0", "--no-ops", "--quiet"]


def _rehashed(rel: str, data: bytes):
    """Replace an artifact file by `data` and record its hash in the plan (a consistent, hostile artifact)."""
    def setup(s):
        def edit(plan):
            plan["files"][rel] = hashlib.sha256(data).hexdigest()
        a = s.art(edit)
        (a / rel).write_bytes(data)
        return ["profile", a, "--runs", "2", "--warmup", "0", "--no-ops", "--quiet"]
    return setup


def _truncate(rel: str):
    def setup(s):
        a = s.art()
        b = (a / rel).read_bytes()
        (a / rel).write_bytes(b[: len(b) // 2])
        return ["profile", a, "--runs", "2", "--warmup", "0", "--no-ops", "--quiet"]
    return setup


def _delete_file(rel: str):
    def setup(s):
        a = s.art()
        (a / rel).unlink()
        return ["profile", a, "--runs", "2", "--warmup", "0", "--no-ops", "--quiet"]
    return setup


def _plan_text(text: str):
    def setup(s):
        a = s.art()
        (a / "plan.json").write_text(text)
        return ["profile", a, "--runs", "2", "--quiet"]
    return setup


def _target(spec: str, runner: str | None = None):
    def setup(s):
        s.fake_ssh()
        return _target_argv(s, spec, runner)
    return setup


def _target_argv(s, spec, runner):
    return ["profile", s.art(), "--target", spec, "--runs", "2", "--warmup", "0", "--no-ops", "--quiet",
                      "--timeout", "60", *(["--runner", runner] if runner else [])]


def _bitflip(cmd: str):
    def setup(s):
        m = s.model()
        w = m / "model.safetensors"
        b = bytearray(w.read_bytes())
        b[-5] ^= 0x10  # in the data block (the header is at the start)
        w.write_bytes(bytes(b))
        if cmd == "export":
            return ["export", m, "--to", "onnx", "-o", s.work / "out", "--tokens", "16", "--quiet"]
        return ["eval", m, "--limit", "4"]
    return setup


def _acmize(*args, model="hf"):
    return lambda s: ["acmize", s.copy(model) if model else None, "-o", s.work / "out", *FEW, *args]


def _acmize_model(prepare):
    """acmize a copy of hf/ that prepare(dir) changed."""
    def setup(s):
        d = s.copy("hf", "m")
        prepare(d)
        return ["acmize", d, "-o", s.work / "out", *FEW]
    return setup


def _pickle_dict(d: Path):
    import torch

    (d / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(3, 3)}, d / "pytorch_model.bin")


def _pickle_garbage(d: Path):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(os.urandom(4096))


def _no_tokenizer(d: Path):
    for f in d.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            f.unlink()


def _export(*args, model="model", prepare=None):
    def setup(s):
        m = s.model(model)
        if prepare:
            prepare(s, m)
        return ["export", m, "--to", "onnx", "-o", s.work / "out", "--tokens", "16", "--quiet", *args]
    return setup


def _eval(*args, model="model", prepare=None):
    def setup(s):
        m = s.model(model)
        if prepare:
            prepare(s, m)
        return ["eval", m, *args]
    return setup


def _with_data(novels, cmd):
    def setup(s):
        s.data(novels)
        return cmd(s)
    return setup


def _edge_data_file(cmd):
    def setup(s):
        f = s.file("data-file", "not a directory\n")
        s.env["EDGE_DATA"] = str(f)
        return cmd(s)
    return setup


def _parent_is_file(cmd):
    """-o afile/out where afile is a regular file."""
    def setup(s):
        s.file("afile", "a file, not a directory\n")
        return cmd(s, s.work / "afile" / "out")
    return setup


PROC = "/proc/edge-bad-input/out"  # a parent that cannot be made, even by root


def _existing_file_overwrite(s):
    s.file("out", "an existing file\n")
    return ["acmize", s.copy("hf"), "-o", s.work / "out", "--overwrite", *FEW]


def _replaced_by_dir(s):
    assert (s.work / "out").is_dir() and (s.work / "out" / "model.safetensors").is_file()
    assert not list(s.work.glob(".out*")), list(s.work.iterdir())


def _runner_existing(s):
    d = s.work / "runner"
    d.mkdir()
    (d / "sentinel.txt").write_text("mine\n")
    return ["runner", "-o", d]


def _preset_yaml(change: dict | None = None, drop: str | None = None, text: str | None = None):
    def setup(s):
        import yaml

        if text is not None:
            body = text
        else:
            f = s.preset_fields()
            f.update(change or {})
            if drop:
                f.pop(drop)
            body = yaml.safe_dump(f, sort_keys=False)
        return ["preset", "show", s.preset(body)]
    return setup


BOMB = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
PYTHON_TAG = "!!python/object/apply:os.system ['touch PWNED']\n"


def _real_novels():
    from edge.data import austen_path

    return json.loads(austen_path().read_text())


def _novels_without(name):
    def setup(s):
        n = _real_novels()
        del n[name]
        s.data(n)
        return ["export", s.model(), "--to", "onnx", "-o", s.work / "out", "--tokens", "16", "--quiet"]
    return setup


def _novels_with(name, value):
    def setup(s):
        n = _real_novels()
        n[name] = value
        s.data(n)
        return ["export", s.model(), "--to", "onnx", "-o", s.work / "out", "--tokens", "16", "--quiet"]
    return setup


def _export_cmd(s, out=None):
    return ["export", s.model(), "--to", "onnx", "-o", out or s.work / "out", "--tokens", "16", "--quiet"]


def _text(make):
    """--text pointing at what make(sandbox) returns, for `edge export` (which reads it first)."""
    def setup(s):
        return ["export", s.model(), "--to", "onnx", "-o", s.work / "out", "--tokens", "16", "--quiet",
                "--text", make(s)]
    return setup


def _meta(edit):
    return _export(prepare=lambda s, m: (m / "edge.json").write_text(json.dumps(edit(json.loads((m / "edge.json").read_text())))))


def _meta_set(**kv):
    return _meta(lambda meta: {**meta, **kv})


CASES = [
    # 1. writes outside the output directory: the default preset name is made from plan fields
    P(Case(_plan_escape_type(lambda s: "../../X"), (ART_ERR + ("model.type", "name"),),
           may_succeed=("work/profiles", "work/profiles/*")), id="choose-default-name-type-dotdot"),
    P(Case(_plan_escape_type(lambda s: str(s.outside / "abs-X")), (ART_ERR + ("model.type", "name"),),
           may_succeed=("work/profiles", "work/profiles/*")), id="choose-default-name-type-absolute-sandbox"),
    P(Case(_plan_escape_type(_tmp_abs), (ART_ERR + ("model.type", "name"),),
           may_succeed=("work/profiles", "work/profiles/*")), id="choose-default-name-type-absolute-tmp"),
    # 2. reads outside the artifact
    P(Case(lambda s: _profile(_method_outside(s))(s), (ART_ERR + ("outside", "evil.onnx"),)), id="profile-method-file-outside"),
    P(Case(lambda s: _choose(_method_outside(s))(s), (ART_ERR + ("outside", "evil.onnx"),)), id="choose-method-file-outside"),
    P(Case(_profile(_files_passwd), (ART_ERR + ("/etc/passwd",),)), id="profile-files-etc-passwd"),
    P(Case(_choose(_files_passwd), (ART_ERR + ("/etc/passwd",),)), id="choose-files-etc-passwd"),
    P(Case(lambda s: _profile(_files_sentinel(s))(s), (ART_ERR + ("outside",),)), id="profile-files-dotdot-sentinel"),
    P(Case(_profile(_method_named("../../../x")), (ART_ERR + ("method", "../../../x"),)), id="profile-method-named-dotdot"),
    P(Case(_choose(_method_named("../../../x")), (ART_ERR + ("method", "../../../x"),)), id="choose-method-named-dotdot"),
    P(Case(_profile(_routed_method_named("../../../x"), art="art_routed"), (ART_ERR + ("method", "../../../x"),)),
      id="profile-routed-segment-named-dotdot"),
    P(Case(_choose(_routed_method_named("../../../x"), art="art_routed"), (ART_ERR + ("method", "../../../x"),)),
      id="choose-routed-segment-named-dotdot"),
    # 3. an existing runner directory is not deleted without --overwrite
    P(Case(_runner_existing, ("already exists",), timeout=600), id="runner-o-existing-dir"),
    # 4. ssh targets: nothing that ssh would read as an option, nothing odd; unknown keys, bad ports
    P(Case(_target("ssh://-oProxyCommand=touch${IFS}PWNED@localhost"), ("ssh", "target")), id="ssh-user-proxycommand"),
    P(Case(_target("ssh://user@-oProxyCommand=touch${IFS}PWNED"), ("ssh", "target")), id="ssh-host-dash"),
    P(Case(_target("ssh://-lroot@localhost"), ("ssh", "target")), id="ssh-user-dash-l"),
    P(Case(_target("ssh://us;touch PWNED@localhost"), ("ssh", "target")), id="ssh-user-semicolon"),
    P(Case(_target("ssh://user@local$(touch PWNED)host"), ("ssh", "target")), id="ssh-host-dollar-paren"),
    P(Case(_target("ssh://user@localhost?foo=bar"), ("foo",)), id="ssh-unknown-query-key"),
    P(Case(_target("ssh://user@localhost:99999"), ("port",)), id="ssh-port-out-of-range"),
    P(Case(_target("ssh://user@localhost:abc"), ("port",)), id="ssh-port-not-a-number"),
    P(Case(_target("ssh://user@localhost:0"), ("port",)), id="ssh-port-zero"),
    P(Case(_target("ssh://"), ("ssh", "target")), id="ssh-no-host"),
    # 5. tracebacks that must become one line: an output path whose parent is a file
    P(Case(_parent_is_file(lambda s, o: _export_cmd(s, o)), ("afile",)), id="export-o-parent-is-file"),
    P(Case(_parent_is_file(lambda s, o: ["acmize", s.copy("hf"), "-o", o, *FEW]), ("afile",)),
      id="acmize-o-parent-is-file"),
    P(Case(_parent_is_file(lambda s, o: ["profile", s.art(), "--runs", "2", "--no-ops", "--quiet", "-o", o]), ("afile",)),
      id="profile-o-parent-is-file"),
    P(Case(_parent_is_file(lambda s, o: ["runner", "-o", o]), ("afile",)), id="runner-o-parent-is-file"),
    P(Case(_parent_is_file(lambda s, o: ["preset", "choose", s.art(), "--budget-ms", "1e4", "--runs", "2", "--texts",
                                         "4", "-o", Path(o) / "p.yaml", "--quiet"]), ("afile",)),
      id="choose-o-parent-is-file"),
    # an output whose parent cannot be made (as root chmod does not stop writes: /proc)
    P(Case(lambda s: _export_cmd(s, PROC), ("/proc/edge-bad-input",)), id="export-o-unwritable"),
    P(Case(lambda s: ["profile", s.art(), "--runs", "2", "--no-ops", "--quiet", "-o", PROC], ("/proc/edge-bad-input",)),
      id="profile-o-unwritable"),
    P(Case(lambda s: ["preset", "choose", s.art(), "--budget-ms", "1e4", "--runs", "2", "--texts", "4", "-o",
                      PROC + ".yaml", "--quiet"], ("/proc/edge-bad-input",)), id="choose-o-unwritable"),
    P(Case(lambda s: ["runner", "-o", PROC], ("/proc/edge-bad-input",)), id="runner-o-unwritable"),
    # EDGE_DATA is a file
    P(Case(_edge_data_file(lambda s: ["data"]), ("data-file",)), id="data-edge-data-is-file"),
    P(Case(_edge_data_file(lambda s: ["acmize", s.copy("hf"), "-o", s.work / "out", *FEW]), ("data-file",)),
      id="acmize-edge-data-is-file"),
    # acmize -o EXISTING_FILE --overwrite: refused cleanly, or the file replaced (never a .out.old left)
    P(Case(_existing_file_overwrite, ("out",), may_succeed=("work/out", "work/out/*"), ok=_replaced_by_dir),
      id="acmize-o-existing-file-overwrite"),
    # pickled checkpoints, a model too short for the passages
    P(Case(_acmize_model(_pickle_dict), (("pytorch_model.bin", "pickle", "safetensors", "weights"),)), id="acmize-pickle-dict"),
    P(Case(_acmize_model(_pickle_garbage), (("pytorch_model.bin", "pickle", "safetensors", "corrupt", "weights"),)),
      id="acmize-pickle-garbage"),
    P(Case(_acmize(model="hf16"), (("position", "tokens", "16"),), may_succeed=("work/out", "work/out/*")),
      id="acmize-max-positions-16"),  # (refused, or the passages cut to the model's 16 positions)
    # plans without what the commands read
    P(Case(_profile(_delete("budget_levels")), (ART_ERR + ("budget_levels",),)), id="profile-plan-without-budget-levels"),
    P(Case(_choose(_delete("budget_levels")), (ART_ERR + ("budget_levels",),)), id="choose-plan-without-budget-levels"),
    P(Case(_profile(_delete("methods")), (ART_ERR + ("methods",),)), id="profile-plan-without-methods"),
    P(Case(_profile(_set("methods.forward", 5)), (ART_ERR + ("methods",),)), id="profile-plan-method-file-int"),
    P(Case(_profile(_set("model", "bert")), (ART_ERR + ("model",),)), id="profile-plan-model-str"),
    P(Case(_profile(_set("inputs.0.dtype", "complex128")), (ART_ERR + ("dtype",),)), id="profile-plan-input-dtype-unknown"),
    P(Case(_profile(_set("runtime", "bogus")), (ART_ERR + ("runtime", "bogus"),)), id="profile-plan-runtime-unknown"),
    P(Case(_profile(_set("mode", "weird")), (ART_ERR + ("mode", "weird"),)), id="profile-plan-mode-unknown"),
    # a binary preset
    P(Case(lambda s: ["preset", "show", s.preset(os.urandom(512) + b"\xff\xfe")], ("p.yaml",)), id="preset-show-binary"),
    # a data cache of the wrong shape
    P(Case(_with_data([], _export_cmd), ("austen.json",)), id="data-cache-list"),
    P(Case(_novels_without("emma"), ("austen.json",)), id="data-cache-novel-missing"),
    P(Case(_novels_with("emma", []), ("austen.json",)), id="data-cache-novel-empty"),
    P(Case(_novels_with("emma", [1, 2, 3]), ("austen.json",)), id="data-cache-novel-numbers"),
    P(Case(_with_data(b"\x00not json", _export_cmd), ("austen.json",)), id="data-cache-not-json"),
    P(Case(_with_data(None, _export_cmd), ("austen.json",)), id="data-cache-null"),
    # an original of another shape, a calibration set of 0
    P(Case(lambda s: ["eval", s.model(), "--original", s.copy("hf_h16"), "--limit", "4"], (("hidden", "hf_h16", "original"),)),
      id="eval-original-other-hidden-size"),
    P(Case(_export("--budgets", "0.5", "--calib", "0"), ("calib",)), id="export-budgets-calib-0"),
    P(Case(_export("--budgets", "0.5", "--calib", "-2"), ("calib",)), id="export-budgets-calib-negative"),
    # 6. inputs that used to be taken: limits of 0 or below, tokens, tokenizer, bit flips, NaN knobs
    P(Case(_acmize("--train-limit", "0"), ("train-limit",)), id="acmize-train-limit-0"),
    P(Case(_acmize("--train-limit", "-3"), ("train-limit",)), id="acmize-train-limit-negative"),
    P(Case(_acmize("--eval-limit", "0"), ("eval-limit",)), id="acmize-eval-limit-0"),
    P(Case(_acmize("--knob", "1.0", "1.5"), ("knob", "1.5")), id="acmize-knob-above-1"),
    P(Case(_acmize("--knob", "0"), ("knob",)), id="acmize-knob-0"),
    P(Case(_eval("--calib-limit", "0"), ("calib-limit",)), id="eval-calib-limit-0"),
    P(Case(_eval("--limit", "-5"), ("limit",)), id="eval-limit-negative"),
    P(Case(_eval("--limit", "0"), ("limit",)), id="eval-limit-0"),
    P(Case(_export("--tokens", "0"), ("tokens",)), id="export-tokens-0"),
    P(Case(_export("--tokens", "1"), ("tokens",)), id="export-tokens-1"),
    P(Case(_export("--tokens", "100000"), ("tokens",)), id="export-tokens-above-max-positions"),
    P(Case(_acmize_model(_no_tokenizer), ("tokenizer",)), id="acmize-model-without-tokenizer"),
    P(Case(_bitflip("export"), (("digest", "sha-256", "changed", "does not match", "corrupt"),)), id="export-bitflip-safetensors"),
    P(Case(_bitflip("eval"), (("digest", "sha-256", "changed", "does not match", "corrupt"),)), id="eval-bitflip-safetensors"),
    P(Case(_profile(_nan_level), (ART_ERR + ("nan", "finite", "gate_bias"),)), id="profile-plan-level-nan"),
    P(Case(_choose(_nan_level), (ART_ERR + ("nan", "finite", "gate_bias"),)), id="choose-plan-level-nan"),
    P(Case(_preset_yaml(text=None, change={"knobs": {"gate_bias": [float("nan"), 0.0]}}), (("knobs", "nan", "finite"),)),
      id="preset-show-knob-nan"),
    P(Case(_preset_yaml(change={"knobs": {"gate_bias": [float("inf"), 0.0]}}), (("knobs", "inf", "finite"),)),
      id="preset-show-knob-inf"),
    P(Case(_preset_yaml(change={"knobs": {"gate_bias": [True, 0.0]}}), ("knobs",)), id="preset-show-knob-bool"),
    # 7. artifacts
    P(Case(lambda s: ["profile", s.work / "missing", "--runs", "2"], ("missing",)), id="profile-artifact-missing"),
    P(Case(lambda s: ["profile", s.file("afile", "x"), "--runs", "2"], ("afile",)), id="profile-artifact-is-file"),
    P(Case(_plan_text(""), ("plan.json",)), id="profile-plan-empty"),
    P(Case(_plan_text("[1, 2, 3]"), ("plan.json",)), id="profile-plan-list"),
    P(Case(_plan_text("{\"format\": \"edge-plan\", \"files\": {}, "), ("plan.json",)), id="profile-plan-truncated-json"),
    P(Case(_profile(_set("version", 99)), (("version", "plan"),)), id="profile-plan-version-99"),
    P(Case(_profile(_set("files", ["model.onnx"])), ("plan",)), id="profile-plan-files-list"),
    P(Case(_truncate("checks.safetensors"), ("checks.safetensors",)), id="profile-checks-truncated"),
    P(Case(_truncate("model.onnx"), ("model.onnx",)), id="profile-program-truncated"),
    P(Case(_delete_file("model.onnx"), ("model.onnx",)), id="profile-program-deleted"),
    P(Case(_delete_file("checks.safetensors"), ("checks.safetensors",)), id="profile-checks-deleted"),
    P(Case(_symlink_program, (ART_ERR + ("link", "outside", "model.onnx"),)), id="profile-program-symlink-outside"),
    P(Case(_rehashed("model.onnx", b"not an onnx model" * 10), (ART_ERR + ("model.onnx", "onnx"),)),
      id="profile-program-garbage-rehashed"),
    P(Case(_rehashed("checks.safetensors", os.urandom(300)), (ART_ERR + ("checks.safetensors", "checks"),)),
      id="profile-checks-garbage-rehashed"),
    P(Case(_profile(_method_named("model")), (ART_ERR + ("forward", "method"),)), id="profile-graph-method-renamed"),
    P(Case(_choose(_delete("tokenizer")), (ART_ERR + ("tokenizer",),)), id="choose-plan-without-tokenizer"),
    # measurement options
    P(Case(_profile(None, "--runs", "0"), ("runs",)), id="profile-runs-0"),
    P(Case(_profile(None, "--runs", "-1"), ("runs",)), id="profile-runs-negative"),
    P(Case(_profile(None, "--threads", "0"), ("threads",)), id="profile-threads-0"),
    P(Case(_profile(None, "--warmup", "-1"), ("warmup",)), id="profile-warmup-negative"),
    P(Case(_profile(None, "--percentile", "0"), ("percentile",)), id="profile-percentile-0"),
    P(Case(_profile(None, "--percentile", "150"), ("percentile",)), id="profile-percentile-150"),
    P(Case(_profile(None, "--percentile", "nan"), ("percentile",)), id="profile-percentile-nan"),
    P(Case(_profile(None, "--budget-ms", "-1"), ("budget",)), id="profile-budget-ms-negative"),
    P(Case(_profile(None, "--budget-ms", "nan"), ("budget",)), id="profile-budget-ms-nan"),
    P(Case(_profile(None, "--timeout", "0"), ("timeout",)), id="profile-timeout-0"),
    P(Case(_profile(None, "--timeout", "nan"), ("timeout",)), id="profile-timeout-nan"),
    P(Case(_choose(None, "--runs", "0"), ("runs",)), id="choose-runs-0"),
    P(Case(lambda s: ["preset", "choose", s.art(), "--budget-ms", "nan", "--runs", "2", "--texts", "4", "--quiet"],
           ("budget",)), id="choose-budget-ms-nan-default-name"),
    P(Case(lambda s: ["preset", "choose", s.art(), "--budget-ms", "-1", "--runs", "2", "--texts", "4", "--quiet"],
           ("budget",)), id="choose-budget-ms-negative-default-name"),
    P(Case(_choose(None, "--texts", "0"), ("texts", "held-out")), id="choose-texts-0"),
    P(Case(_choose(None, "--texts", "-1"), ("texts",)), id="choose-texts-negative"),
    P(Case(lambda s: ["preset", "choose", s.art(), "--runs", "2", "--quiet"], ("budget-ms",)), id="choose-without-budget"),
    P(Case(lambda s: ["preset", "choose", s.art(), "--budget-ms", "1e4", "--name", "../../outside/evil", "--runs", "2",
                      "--texts", "4", "--quiet"], ("name",), may_succeed=("work/profiles", "work/profiles/*")),
      id="choose-name-dotdot"),
    # targets and runners
    P(Case(_target("foo://x"), ("foo",)), id="target-unknown-scheme"),
    P(Case(_target("adb:"), ("adb",)), id="target-adb-empty-serial"),
    P(Case(_target("local", runner="bogus"), ("bogus",)), id="runner-unknown"),
    P(Case(_target("local", runner="native"), ("native",)), id="runner-native-onnx-artifact"),
    P(Case(lambda s: ["runner", "--arch", "sparc", "-o", s.work / "r"], ("sparc",)), id="runner-arch-unknown"),
    # acmize options
    P(Case(_acmize("--budget", "0"), ("budget",)), id="acmize-budget-0"),
    P(Case(_acmize("--budget", "1.5"), ("budget",)), id="acmize-budget-1.5"),
    P(Case(_acmize("--budget", "nan"), ("budget",)), id="acmize-budget-nan"),
    P(Case(_acmize("--learners", "0"), ("learners",)), id="acmize-learners-0"),
    P(Case(_acmize("--gate-hidden", "0"), ("gate_hidden", "gate-hidden")), id="acmize-gate-hidden-0"),
    P(Case(_acmize("--repr-steps", "-1"), ("repr", "steps")), id="acmize-repr-steps-negative"),
    P(Case(_acmize("--calib-limit", "0"), ("calib-limit",)), id="acmize-calib-limit-0"),
    P(Case(lambda s: ["acmize", s.work / "nope", "-o", s.work / "out", *FEW], ("nope",)), id="acmize-model-missing"),
    P(Case(lambda s: ["acmize", s.file("gpt2/config.json", json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8,
                                                                      "n_head": 2})).parent, "-o", s.work / "out", *FEW],
           ("gpt2",)), id="acmize-unsupported-architecture"),
    P(Case(_acmize_model(lambda d: (d / "config.json").write_text("{not json")), ("config",)), id="acmize-config-not-json"),
    # presets
    P(Case(lambda s: ["preset", "list", (s.work / "empty").mkdir() or s.work / "empty"], ("no presets",)),
      id="preset-list-empty-dir"),
    P(Case(lambda s: ["preset", "list", s.file("presets/bad.yaml", "a: [").parent], ("bad.yaml",)),
      id="preset-list-malformed"),
    P(Case(_preset_yaml(change={"extra_field": 1}), ("extra_field",)), id="preset-show-unknown-key"),
    P(Case(_preset_yaml(drop="knobs"), ("knobs",)), id="preset-show-missing-key"),
    P(Case(_preset_yaml(text=BOMB), ("p.yaml",)), id="preset-show-alias-bomb"),
    P(Case(_preset_yaml(text=PYTHON_TAG), ("p.yaml",)), id="preset-show-python-tag"),
    P(Case(_preset_yaml(text=""), ("p.yaml",)), id="preset-show-empty"),
    P(Case(_preset_yaml(text="- a\n- b\n"), ("mapping",)), id="preset-show-list"),
    P(Case(_preset_yaml(change={"threads": 0}), ("threads",)), id="preset-show-threads-0"),
    P(Case(_preset_yaml(change={"budget_ms": "fast"}), ("budget_ms",)), id="preset-show-budget-string"),
    P(Case(_preset_yaml(change={"knobs": "all"}), ("knobs",)), id="preset-show-knobs-string"),
    P(Case(_preset_yaml(change={"quality": float("nan")}), ("quality",)), id="preset-show-quality-nan"),
    P(Case(lambda s: ["preset", "show", s.work], ("work",)), id="preset-show-directory"),
    P(Case(lambda s: ["preset", "show"], ("preset file", "preset_file")), id="preset-show-no-path"),
    # --text
    P(Case(_text(lambda s: s.file("bin.txt", os.urandom(4096) + b"\xff\xfe\xfd")), ("bin.txt",)), id="text-binary"),
    P(Case(_text(lambda s: s.file("three.txt", "one line\ntwo lines\nthree lines\n")), ("three.txt",)), id="text-3-lines"),
    P(Case(_text(lambda s: s.work), ("work",)), id="text-directory"),
    # model directories
    P(Case(_meta(lambda m: "{not json"), ("edge.json",)), id="export-edge-json-not-json"),
    P(Case(_meta_set(model_module="os", model_class="system"), ("model_module",)), id="export-edge-json-module-os"),
    P(Case(_meta_set(model_module="transformers.models.auto.modeling_auto", model_class="AutoModel"), ("edge.json", "model_class", "automodel")),
      id="export-edge-json-class-automodel"),
    P(Case(_meta_set(model_module="transformers.models.bert.modeling_bert", model_class="NoSuchModel"), ("nosuchmodel",)),
      id="export-edge-json-class-missing"),
    P(Case(_meta_set(acm={"learners": -1}), ("learners", "acm")), id="export-edge-json-acm-learners-negative"),
    P(Case(_meta_set(absent_modules=["encoder"]), ("absent_modules", "encoder")), id="export-edge-json-absent-encoder"),
    P(Case(_meta(lambda m: [m]), ("edge.json",)), id="export-edge-json-list"),
    P(Case(_export(prepare=lambda s, m: (m / "model.safetensors").unlink()), ("model.safetensors",)),
      id="export-weights-missing"),
    P(Case(_export(prepare=lambda s, m: (m / "config.json").write_text("[]")), ("config",)), id="export-config-list"),
    P(Case(lambda s: ["export", s.file("afile", "x"), "--to", "onnx", "-o", s.work / "out"], ("afile",)),
      id="export-model-is-file"),
    P(Case(lambda s: ["export", s.model(), "--to", "onnx", "-o", s.file("existing/sentinel.txt", "x").parent,
                      "--tokens", "16"], ("already exists",)), id="export-o-existing-dir"),
    P(Case(lambda s: ["profile", s.art(), "--runs", "2", "-o", s.file("existing/sentinel.txt", "x").parent],
           ("already exists",)), id="profile-o-existing-dir"),
    # plans edited without their own digest recomputed (a hand edit), or without one at all
    P(Case(lambda s: ["profile", s.art(_set("budget_levels.0.gate_bias", [0.5, 0.5]), resign=False), "--runs", "2",
                      "--quiet"], (ART_ERR,)), id="profile-plan-hand-edited"),
    P(Case(lambda s: ["preset", "choose", s.art(_set("model.type", "../../X"), resign=False), "--budget-ms", "1e4",
                      "--runs", "2", "--texts", "4", "--quiet"], (ART_ERR,)), id="choose-plan-hand-edited-type-dotdot"),
    P(Case(_profile(lambda plan: plan.pop(PLAN_DIGEST, None)), (ART_ERR,)), id="profile-plan-without-own-digest"),
    P(Case(_profile(_set("tolerance", float("nan"))), (ART_ERR + ("tolerance",),)), id="profile-plan-tolerance-nan"),
    P(Case(_profile(_set("control_flow.acms.0.index", 7)), (ART_ERR + ("control_flow", "acms"),)),
      id="profile-plan-acm-index-out-of-range"),
    P(Case(_profile(_set("routed.segments.0.then.next", 999), art="art_routed"), (ART_ERR + ("segment", "next"),)),
      id="profile-routed-next-out-of-range"),
    P(Case(_profile(_set("routed.segments.0.then.next", 0), art="art_routed"), (ART_ERR + ("segment", "next"),)),
      id="profile-routed-segment-loop"),
    P(Case(_profile(_set("routed.segments.0.inputs", ["../../outside/sentinel.txt"]), art="art_routed"),
           (ART_ERR + ("segment", "input"),)), id="profile-routed-input-name-dotdot"),
    # argparse's own errors, as one line too
    P(Case(lambda s: ["profile", s.art(), "--runs", "abc"], ("--runs",)), id="argparse-runs-not-int"),
    P(Case(lambda s: ["export", s.model(), "--to", "tflite", "-o", s.work / "out"], ("--to",)), id="argparse-to-unknown"),
    P(Case(lambda s: ["acmize", s.copy("hf"), "-o", s.work / "out", "--precision", "fp8"], ("--precision",)),
      id="argparse-precision-unknown"),
    P(Case(lambda s: ["bogus"], ("bogus",)), id="argparse-unknown-command"),
    P(Case(lambda s: ["export", s.model(), "--to", "onnx"], ("-o", "--output")), id="argparse-export-without-output"),
    P(Case(lambda s: ["profile", s.art(), "--budget-ms", "fast"], ("--budget-ms",)), id="argparse-budget-ms-not-float"),
    P(Case(_eval(prepare=lambda s, m: (m / "edge.json").write_text(json.dumps(
        {**json.loads((m / "edge.json").read_text()), "format_version": 4}))), ("edge.json",)),
      id="eval-edge-json-format-version-4"),
]


# what any command may leave in a data directory that a case put in its sandbox (EDGE_DATA): its log
LOGS = ("work/data/logs", "work/data/logs/edge-*.log")
# a Python exception's name in the error line: an internal error, not a user's one named
LEAKED = re.compile(r"\binternal error\b|\b(KeyError|TypeError|AttributeError|IndexError|NameError|UnboundLocalError|"
                    r"ZeroDivisionError|AssertionError|UnicodeDecodeError|FileNotFoundError|FileExistsError|"
                    r"NotADirectoryError|IsADirectoryError|PermissionError)\b")


def _resolve(case: Case, s: Sandbox) -> list[str]:
    argv = case.setup(s)
    return [str(a) for a in argv if a is not None]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line(case: Case, inputs, tmp_path, request):
    s = Sandbox(tmp_path, inputs)
    argv, needles = _resolve(case, s), case.needles
    before, profiles_before = snapshot(tmp_path), snapshot(PROFILES)
    try:
        r = _edge_cli(argv, cwd=s.work, env=s.env, timeout=case.timeout)
        after = snapshot(tmp_path)
        if os.environ.get("EDGE_BAD_INPUT_LOG"):  # (one JSON line per case, for a summary of a whole run)
            with open(os.environ["EDGE_BAD_INPUT_LOG"], "a") as log:
                log.write(json.dumps({"id": request.node.callspec.id, "argv": argv, "rc": r.returncode, "stderr": r.stderr[-4000:],
                                      "diff": diff(before, after)}) + "\n")
        out = f"$ edge {' '.join(argv)}\nexit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stdout + r.stderr, out
        assert not [p for p in after if "PWNED" in p], out
        assert snapshot(PROFILES) == profiles_before, f"the repository's profiles/ changed\n{out}"
        for p in s.cleanup:
            assert not p.exists(), f"{p} was written outside the sandbox\n{out}"
        changes = [d for d in diff(before, after) if not any(fnmatch.fnmatch(d[2:], g) for g in LOGS)]
        if r.returncode == 0 and case.may_succeed is not None:
            changed = [d[2:] for d in changes]
            assert all(any(fnmatch.fnmatch(c, g) for g in case.may_succeed) for c in changed), \
                f"a successful run changed {changed} (allowed: {case.may_succeed})\n{out}"
            if case.ok:
                case.ok(s)
            return
        assert r.returncode == 2, out
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("edge: error:"), out
        assert not LEAKED.search(lines[0]), f"the error line is an exception's, not a user error named\n{out}"
        low = lines[0].lower()
        # needles: plain strings are alternatives (one of them); tuples inside are groups that must all match
        groups = [] if not needles else [needles] if all(isinstance(n, str) for n in needles) else [n if isinstance(n, tuple) else (n,)
                                                                             for n in needles]
        for alternatives in groups:
            assert any(a.lower() in low for a in alternatives), f"none of {alternatives} in the error line\n{out}"
        assert changes == [], f"the failing command changed the sandbox: {changes}\n{out}"
        assert (s.outside / "sentinel.txt").read_text() == "do not touch\n"
    finally:
        for p in s.cleanup:
            if p.exists():
                p.unlink()
