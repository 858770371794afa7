"""Multi-level training (edge.multilevel, edge.vcycle): the three operators on every registered
architecture at random sizes, and the V-cycle trainer on the real Austen MLM job (a tiny model)."""
import copy
import json
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from edge.arch import ARCHS, arch_for
from edge.config import CONFIGS
from edge.errors import EdgeError
from edge.multilevel import coalesce, decoalesce, interpolate_, roles
from edge.vcycle import VCycleConfig, train

from test_cli import assert_user_error, edge_cli

TYPES = [(a, mt) for _, a in ARCHS.items() for mt in a.model_types]
FACTORS = [(2, 1), (2, 2), (1, 2), (4, 1)]


def _random_model(arch, mt, seed):
    """The adapter's tiny model with random sizes that the factors divide (heads a multiple of 4,
    layers of 2), in its own class: sizes users bring, not only the ones edge ships."""
    model, batch = arch.tiny(mt, seed)
    rng = random.Random(seed)
    cfg = model.config
    heads = 4 * rng.randint(1, 2)
    head_dim = rng.choice([4, 8])
    h_f, n_f, f_f, l_f = arch.size_fields
    setattr(cfg, h_f, heads * head_dim)
    setattr(cfg, n_f, heads)
    setattr(cfg, f_f, 4 * rng.randint(2, 6) * 4)
    setattr(cfg, l_f, 2 * rng.randint(1, 2))
    for f in arch.also_hidden:
        if hasattr(cfg, f):
            setattr(cfg, f, heads * head_dim)
    torch.manual_seed(seed)
    kwargs = {"add_pooling_layer": False} if getattr(model, "pooler", "none") is None else {}
    return type(model)(cfg, **kwargs).eval(), batch


def _params(m):
    return dict(m.named_parameters())


def _tiled_output_matches(big, small, batch, w):
    """A width-only de-coalesced model computes its small model's function on tiled features."""
    a, b = arch_for(big).hf_output(big, batch), arch_for(small).hf_output(small, batch)
    a = a.unflatten(-1, (w, -1))
    assert torch.allclose(a, a[..., :1, :].expand_as(a), atol=1e-5)  # the w copies agree
    torch.testing.assert_close(F.normalize(a[..., 0, :], dim=-1), F.normalize(b, dim=-1), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,mt", TYPES, ids=[mt for _, mt in TYPES])
@pytest.mark.parametrize("width,depth", FACTORS)
@pytest.mark.parametrize("seed", [0, 1])
def test_operators_round_trip_and_shapes(arch, mt, width, depth, seed):
    large, batch = _random_model(arch, mt, seed)
    hidden, heads, ffn, layers = (getattr(large.config, f) for f in arch.size_fields)
    small = coalesce(large, width, depth)
    assert type(small) is type(large)
    assert [getattr(small.config, f) for f in arch.size_fields] == [hidden // width, heads // width, ffn // width,
                                                                    layers // depth]
    assert len(arch.layers(small)) == layers // depth
    r = roles(large)
    for name, p in _params(large).items():  # every parameter's shape follows its roles
        want = [n // width if role is not None else n for n, role in zip(p.shape, r[name])]
        if name in _params(small):
            assert list(_params(small)[name].shape) == want, name
    arch.hf_output(small, batch)  # the small model runs
    big = decoalesce(small, large, width, depth)
    assert all(a.shape == b.shape for a, b in zip(big.parameters(), large.parameters()))
    back = coalesce(big, width, depth)
    for name, p in _params(small).items():
        torch.testing.assert_close(_params(back)[name], p, atol=1e-6, rtol=1e-5, msg=name)
    if depth == 1:
        _tiled_output_matches(big, small, batch, width)


@pytest.mark.parametrize("arch,mt", TYPES, ids=[mt for _, mt in TYPES])
def test_interpolation_alpha_0_is_the_identity_and_1_the_decoalesced(arch, mt):
    large, batch = arch.tiny(mt)
    small = coalesce(large, 2, 2)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(torch.randn_like(p))  # the small model trained on
    same = interpolate_(copy.deepcopy(large), small, 0.0, 2, 2)
    for a, b in zip(same.parameters(), large.parameters()):
        assert torch.equal(a, b)
    one = interpolate_(copy.deepcopy(large), small, 1.0, 2, 2)
    for a, b in zip(one.parameters(), decoalesce(small, large, 2, 2).parameters()):
        assert torch.equal(a, b)
    half = interpolate_(copy.deepcopy(large), small, 0.5, 2, 2)
    for a, b, c in zip(half.parameters(), large.parameters(), one.parameters()):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * c)


@pytest.mark.parametrize("mt", ["bert", "roberta", "electra"])
@pytest.mark.parametrize("width", [2, 4])
def test_tied_language_model_head_is_exact(mt, width):
    """The decoder shares the embedding's matrix: its logits stay exact through de-coalescing, any factor."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    cfg = AutoConfig.for_model(mt, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64, embedding_size=32)
    large = AutoModelForMaskedLM.from_config(cfg, attn_implementation="eager").eval()
    assert large.get_output_embeddings().weight is large.get_input_embeddings().weight
    small = coalesce(large, width, 1)
    big = decoalesce(small, large, width, 1)
    ids = torch.randint(3, 100, (2, 12))
    torch.testing.assert_close(big(input_ids=ids).logits, small(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    for a, b in zip(coalesce(big, width, 1).parameters(), small.parameters()):
        torch.testing.assert_close(a, b)


def test_bad_factors_are_one_clear_error():
    arch = ARCHS.get("bert")
    large, _ = arch.tiny("bert")  # hidden 32, 2 heads, FFN 64, 2 layers
    for w, d, needle in ((4, 1, "num_attention_heads=2"), (1, 3, "num_hidden_layers=2"), (True, 1, "width factor"),
                         (0, 1, "width factor"), (2, 1.5, "depth factor")):
        with pytest.raises(EdgeError, match=needle):
            coalesce(large, w, d)
    other, _ = ARCHS.get("vit").tiny("vit")
    with pytest.raises(EdgeError, match="not this model coalesced"):
        decoalesce(coalesce(other, 2, 1), large, 2, 1)


def test_vcycle_config_rules():
    assert CONFIGS.get("vcycle") is VCycleConfig
    c = VCycleConfig(levels=3)
    assert c.phases == 5 and [c.level(j) for j in range(5)] == [0, 1, 2, 1, 0]
    assert len(c.fractions()) == 5 and c.fractions()[-1] > c.fractions()[-2] and VCycleConfig(levels=1).fractions() == (1.0,)
    for bad in ({"steps": (0.5, 0.5)}, {"lr_scale": (1.0,)}, {"levels": True}, {"alpha": 1.5}):
        with pytest.raises(EdgeError):
            VCycleConfig(**bad)


@pytest.fixture(scope="module")
def tiny_mlm():
    from edge.mlm import AustenMlm

    job = AustenMlm(hidden=32, layers=2, heads=2, batch_size=16, eval_passages=32)
    job.name = "austen-mlm-tiny"
    return job


def test_vcycle_trains_and_resumes_from_a_saved_phase(tiny_mlm, tmp_path):
    cfg = VCycleConfig(levels=2, width=2, depth=2, steps=(0.2, 0.4, 0.4))
    state = tmp_path / "state"
    run = train(tiny_mlm, cfg, total_steps=10, state_dir=state, evaluate_every=2, progress=False)
    assert [r["step"] for r in run.history] == [8, 10]  # (last phase: steps 7-10)
    assert run.history[-1]["metric"] < run.history[0]["metric"] + 1.0  # finite, sensible
    assert sorted(p.name for p in state.iterdir()) == ["phase-0", "phase-1", "phase-2"]
    assert run.model.config.hidden_size == 32 and run.model.config.num_hidden_layers == 2
    # the last phase lost: resumed from phase 1, the run ends where it did
    shutil.rmtree(state / "phase-2")
    again = train(tiny_mlm, cfg, total_steps=10, state_dir=state, evaluate_every=2, progress=False)
    assert again.history[-1]["metric"] == pytest.approx(run.history[-1]["metric"], abs=1e-5)
    for a, b in zip(again.model.parameters(), run.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # another run's phases are refused, not mixed in
    with pytest.raises(EdgeError, match="another run"):
        train(tiny_mlm, VCycleConfig(levels=2, alpha=0.25, steps=(0.2, 0.4, 0.4)), total_steps=10, state_dir=state,
              progress=False)
    json.loads((state / "phase-1" / "state.json").read_text())


def test_plain_training_is_one_level(tiny_mlm):
    run = train(tiny_mlm, VCycleConfig(levels=1), total_steps=4, progress=False)
    assert [r["step"] for r in run.history] == [4]


def test_cli_train_writes_a_model_directory(tmp_path):
    out = tmp_path / "mlm"
    r = edge_cli("train", "austen-mlm", "-o", out, "--epochs", "0.02", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "train.json").read_text())
    assert report["config"]["levels"] == 2 and report["mlm_loss"] > 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert_user_error(edge_cli("train", "austen-mlm", "-o", out, "--epochs", "0.02", "--quiet"), "already exists")
    assert_user_error(edge_cli("train", "austen-mlm", "-o", tmp_path / "x", "--width", "3", "--quiet"),
                      "not divisible")
    assert not (tmp_path / "x").exists()
