"""Save/load round trips and what happens to bad files."""
import json
from dataclasses import replace

import pytest
import torch

import edge
from edge.files import atomic_dir
from tests.conftest import CASES
from tests.test_acm import SMALL, tiny_acm_model


@pytest.mark.parametrize("name,mt", CASES)
def test_round_trip_is_exact(tmp_path, name, mt):
    arch, model, batch, acms = tiny_acm_model(name, mt)
    for a in acms:
        a.gate_bias.fill_(0.25)
    path = edge.save(model, tmp_path / "acm")
    loaded = edge.load(path)
    assert type(loaded) is type(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(arch.output(model, batch), arch.output(loaded, batch))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "edge.json", "model.safetensors"]


def saved(tmp_path):
    _, model, _, _ = tiny_acm_model("bert", "bert")
    return edge.save(model, tmp_path / "acm")


def test_truncated_weights_are_a_clear_error(tmp_path):
    path = saved(tmp_path)
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(edge.EdgeError, match="does not match the digest in edge.json: it was changed or damaged"):
        edge.load(path)
    meta = json.loads((path / "edge.json").read_text())
    del meta["weights_sha256"]  # a model saved before edge recorded the digest: safetensors' own check
    (path / "edge.json").write_text(json.dumps(meta))
    with pytest.raises(edge.EdgeError, match="corrupt"):
        edge.load(path)


def test_a_flipped_bit_in_the_weights_is_refused(tmp_path):
    """safetensors checks its header, not its data: edge.json's digest catches a changed weight."""
    path = saved(tmp_path)
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x10  # a weight's bits, past the header
    w.write_bytes(bytes(data))
    with pytest.raises(edge.EdgeError, match="changed or damaged"):
        edge.load(path)


def test_weights_of_another_shape_are_a_clear_error(tmp_path):
    path = saved(tmp_path)
    meta = json.loads((path / "edge.json").read_text())
    meta["acm"]["learners"] = 4
    (path / "edge.json").write_text(json.dumps(meta))
    with pytest.raises(edge.EdgeError, match="does not match"):
        edge.load(path)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"})])
def test_bad_meta_is_a_clear_error(tmp_path, content):
    path = saved(tmp_path)
    (path / "edge.json").write_text(content)
    with pytest.raises(edge.EdgeError):
        edge.load(path)


def test_loading_never_imports_outside_transformers(tmp_path):
    path = saved(tmp_path)
    meta = json.loads((path / "edge.json").read_text())
    meta["model_module"] = "os"
    (path / "edge.json").write_text(json.dumps(meta))
    with pytest.raises(edge.EdgeError, match="transformers"):
        edge.load(path)


def test_save_refuses_to_overwrite_and_leaves_no_partial_dir(tmp_path):
    path = saved(tmp_path)
    before = (path / "model.safetensors").read_bytes()
    _, other, _, _ = tiny_acm_model("bert", "bert")
    with pytest.raises(edge.EdgeError, match="already exists"):
        edge.save(other, path)
    assert (path / "model.safetensors").read_bytes() == before
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "half"):
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acm"]


def test_save_without_anything_adaptive_is_refused(tmp_path):
    model, _ = edge.ARCHS.get("bert").tiny("bert")
    with pytest.raises(edge.EdgeError, match="nothing of edge.s to save"):
        edge.save(model, tmp_path / "x")


def test_the_distill_config_acmize_writes_reads_back(tmp_path):
    """`edge acmize` writes its resolved DistillConfig into edge.json (save's extra); it reads back equal."""
    from edge.io import read_meta

    _, model, _, _ = tiny_acm_model("bert", "bert")
    distill = edge.DistillConfig(repr_steps=3, tune_backbone=False).resolved()
    path = edge.save(model, tmp_path / "acm", extra={"distill": distill.to_dict()})
    assert edge.DistillConfig.from_dict(read_meta(path)["distill"]) == distill


def test_a_model_saved_by_format_1_loads_with_its_parts(tmp_path):
    """edge.json format 1 kept the parts' weights under edge_exits/edge_routers/edge_head; such a model
    loads into the parts (edge_parts.*) and computes the same; an unknown format is one line."""
    from safetensors.torch import load_file, save_file

    from edge.files import sha256
    from edge.forward import run
    from edge.parts import parts

    model, batch = edge.ARCHS.get("bert").tiny("bert")
    m = edge.add_head(model, torch.nn.Linear(32, 3))
    m = edge.add_exits(m, edge.ExitConfig(after=[1], steps=1, threshold=0.5), [batch], progress=False)
    m = edge.add_skips(m, edge.SkipConfig(samples=2), [batch], progress=False)
    path = edge.save(m, tmp_path / "v2")
    state = load_file(str(path / "model.safetensors"))
    old = {"edge_parts.exits.": "edge_exits.", "edge_parts.skips.": "edge_routers.", "edge_parts.head.": "edge_head."}
    v1 = {next((o + k[len(n):] for n, o in old.items() if k.startswith(n)), k): v for k, v in state.items()}
    assert all(any(k.startswith(o) for k in v1) for o in old.values())
    save_file(v1, str(path / "model.safetensors"))
    meta = json.loads((path / "edge.json").read_text())
    meta.update(format_version=1, weights_sha256=sha256(path / "model.safetensors"))
    (path / "edge.json").write_text(json.dumps(meta))
    back = edge.load(path)
    assert parts(back).names() == ["exits", "head", "skips"] and parts(back).configs == parts(m).configs
    (a, ta), (b, tb) = run(m, batch), run(back, batch)
    assert torch.equal(a, b) and torch.equal(ta.exit_layer, tb.exit_layer) and torch.equal(ta.skipped, tb.skipped)
    meta["format_version"] = 7
    (path / "edge.json").write_text(json.dumps(meta))
    with pytest.raises(edge.EdgeError, match="is not an edge-acm file of version 1, 2 or 3"):
        edge.load(path)


def test_an_acm_saved_by_format_2_loads_without_its_exact_top(tmp_path):
    """Format 2 had no exact_top: its ACMs ran every learner at k = N, as exact_top=False does."""
    arch, model, batch, _ = tiny_acm_model("bert", "bert", replace(SMALL, exact_top=False))
    path = edge.save(model, tmp_path / "v2")
    meta = json.loads((path / "edge.json").read_text())
    assert meta["format_version"] == 3 and meta["acm"]["exact_top"] is False
    del meta["acm"]["exact_top"]
    meta["format_version"] = 2
    (path / "edge.json").write_text(json.dumps(meta))
    back = edge.load(path)
    assert not any(a.exact_top for a in edge.acm_modules(back))
    assert torch.equal(arch.output(model, batch), arch.output(back, batch))


def test_a_new_transform_is_saved_and_loaded_by_registering_alone(tmp_path):
    """The extension point: a transform defined here (a config, an install that adds a module) is
    saved and loaded by edge.save/edge.load, whose code names no transform, once it is registered."""
    from dataclasses import dataclass

    from edge.config import CONFIGS, Config, real, setting
    from edge.parts import TRANSFORMS, Transform, attach, parts, register

    @dataclass(frozen=True)
    class ScaleConfig(Config):
        factor: float = setting(real(0, low_open=True), 2.0)

    def install(model, cfg):
        attach(model).add("test_scale", cfg, torch.nn.Linear(4, 4))

    register(Transform("test_scale", ScaleConfig, install))
    try:
        model, batch = edge.ARCHS.get("bert").tiny("bert")
        install(model, ScaleConfig(factor=3.0))
        path = edge.save(model, tmp_path / "m")
        assert json.loads((path / "edge.json").read_text())["test_scale"] == {"factor": 3.0}
        back = edge.load(path)
        assert parts(back).config("test_scale") == ScaleConfig(factor=3.0)
        assert torch.equal(parts(back).module("test_scale").weight, parts(model).module("test_scale").weight)
    finally:
        TRANSFORMS._items.pop("test_scale", None)
        CONFIGS._items.pop("test_scale", None)
