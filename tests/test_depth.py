"""Exits and skips (edge.depth) on tiny random models of every registered architecture, plus a tiny
ViT classifier (the "logits" kind of exit)."""
import copy

import pytest
import torch
import torch.nn as nn

import edge
from edge.depth import fit_linear_
from edge.exits import exit_heads, install_exits
from edge.forward import run
from edge.parts import parts
from edge.skips import routers
from edge.errors import EdgeError
from edge.flops import count_flops
from tests.conftest import CASES


def tiny_vit_classifier():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=3,
                    num_attention_heads=2, intermediate_size=64, num_labels=5, attn_implementation="eager")
    return ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(3, 1, 16, 16)}


def with_head(arch, model):
    """`model` with a random 3-class task head (edge.add_head): an embedding model made a classifier."""
    return edge.add_head(model, nn.Linear(arch.output_dim(model), 3))


def _tiny(case):
    if case == "vit-classifier":
        return edge.ARCHS.get("vit"), *tiny_vit_classifier()
    if case == "bert-head":
        arch = edge.ARCHS.get("bert")
        model, batch = arch.tiny("bert")
        return arch, with_head(arch, model), batch
    name, mt = case
    arch = edge.ARCHS.get(name)
    return arch, *arch.tiny(mt)


ALL = CASES + ["vit-classifier", "bert-head"]
FEW = dict(progress=False)


def _hidden_states(model, batch):
    """Every layer's output through the model's own (Hugging Face) forward: [embeddings, layer 1, ...]."""
    inner = getattr(model, "base_model", model)
    return inner(**batch, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("case", ALL)
def test_full_setting_equals_original(case):
    arch, model, batch = _tiny(case)
    m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=3), [batch], **FEW)
    m = edge.add_skips(m, edge.SkipConfig(samples=2, threshold=0.0), [batch], **FEW)
    with torch.no_grad():
        out, trace = run(m, batch)
        ref = arch.output(model, batch)
    torch.testing.assert_close(out, ref)
    assert trace.exit_layer.tolist() == [len(arch.layers(model))] * len(out)
    assert not trace.skipped.any()
    assert torch.allclose(trace.flops, trace.full_flops + sum(r.flops() for r in routers(m).values())
                          + exit_heads(m)[1].flops())
    e = edge.add_exits(model, edge.ExitConfig(after=[1], steps=3), [batch], **FEW)  # exits alone
    trace = run(e, batch)[1]
    assert torch.allclose(trace.flops, trace.full_flops + exit_heads(e)[1].flops())


@pytest.mark.parametrize("case", ALL)
def test_forced_exit_equals_truncated_model(case):
    arch, model, batch = _tiny(case)
    n = len(arch.layers(model))
    for after in range(1, n):
        m = edge.add_exits(model, edge.ExitConfig(after=[after], steps=3, threshold=0.0), [batch], **FEW)
        ran = set()  # which layers' sub-modules computed anything
        hooks = [sub.register_forward_hook(lambda *a, i=i: ran.add(i))
                 for i, layer in enumerate(arch.layers(m), 1) for sub in layer.modules() if sub is not layer]
        with torch.no_grad():
            out, trace = run(m, batch)
            _, ctx = arch.embed(model, batch)
            ref, _ = exit_heads(m)[after](arch.pool(_hidden_states(model, batch)[after], ctx))
        for hk in hooks:
            hk.remove()
        torch.testing.assert_close(out, ref)
        assert trace.exit_layer.tolist() == [after] * len(out)
        assert ran == set(range(1, after + 1)), f"layers {sorted(ran)} ran for an exit after {after}"


# how the original model looks with a layer's attention removed, per registered family
def _drop_attention(name, layer):
    class Identity(nn.Module):  # post-LN BERT: the attention block returns its input
        def forward(self, h, *a, **k):
            return h, None

    class Zero(nn.Module):  # pre-LN: the attention adds nothing to the residual
        def forward(self, h=None, *a, hidden_states=None, **k):
            h = h if h is not None else hidden_states
            return torch.zeros_like(h), None

    if name == "bert":
        layer.attention = Identity()
    elif name == "vit":
        layer.attention = Zero()
    elif name == "whisper":
        layer.self_attn = Zero()
    else:
        raise AssertionError(f"add how to drop {name}'s attention to this test")


@pytest.mark.parametrize("case", ALL)
def test_forced_skip_equals_model_without_attention(case):
    arch, model, batch = _tiny(case)
    m = edge.add_skips(model, edge.SkipConfig(samples=2, threshold=1.0), [batch], **FEW)
    calls = []
    hooks = [layer.register_forward_hook(lambda *a: calls.append(1))
             for layer in m.modules() if type(layer).__name__.endswith(("SelfAttention", "Attention"))]
    ref_model = copy.deepcopy(model)
    for layer in arch.layers(ref_model):
        _drop_attention(arch.name, layer)
    with torch.no_grad():
        out, trace = run(m, batch)
        ref = arch.output(ref_model, batch)
    for hk in hooks:
        hk.remove()
    torch.testing.assert_close(out, ref)
    assert trace.skipped.all()
    assert not calls, "a skipped attention was computed"


@pytest.mark.parametrize("case", ALL)
def test_block_skip_and_earliest_exit(case):
    arch, model, batch = _tiny(case)
    m = edge.add_skips(model, edge.SkipConfig(target="block", samples=2, threshold=1.0), [batch], **FEW)
    with torch.no_grad():
        out, _ = run(m, batch)
        h0, ctx = arch.embed(model, batch)
        torch.testing.assert_close(out, arch.head(model, h0, ctx))  # no layer ran
    n = len(arch.layers(model))
    e = edge.add_exits(model, edge.ExitConfig(after=list(range(1, n)), steps=2, threshold=0.0), [batch], **FEW)
    assert run(e, batch)[1].exit_layer.tolist() == [1] * len(out)  # threshold 0: the earliest exit


def test_mixed_batch_takes_each_sequence_its_own_way():
    arch, model, batch = _tiny(("bert", "bert"))
    m = edge.add_skips(model, edge.SkipConfig(layers=[1], samples=2), [batch], **FEW)
    r = routers(m)[1]
    with torch.no_grad():
        scores = r(arch.pool(arch.embed(m, batch)[0], arch.embed(m, batch)[1]))
        parts(m).set_config("skips", edge.SkipConfig(layers=[1], threshold=float(scores.mean())))  # between the two
        out, trace = run(m, batch)
        assert trace.skipped[:, 0].tolist() == (scores < scores.mean()).tolist()
        for i in range(len(out)):  # each sequence alone gives the same answer as in the mixed batch
            alone, _ = run(m, {k: v[i: i + 1] for k, v in batch.items()})
            torch.testing.assert_close(alone[0], out[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ALL)
def test_training_changes_only_heads_and_routers(case):
    arch, model, batch = _tiny(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e = edge.add_exits(model, edge.ExitConfig(after=[1], steps=5), [batch], **FEW)
    s = edge.add_skips(model, edge.SkipConfig(samples=8, epochs=2), [batch], **FEW)
    for trained, extra in ((e, "edge_parts.exits."), (s, "edge_parts.skips.")):
        state = trained.state_dict()
        for k, v in before.items():
            assert torch.equal(state[k], v), f"backbone parameter {k} changed"
        assert all(k in before or k.startswith(extra) for k in state)
    fresh = edge.add_exits(model, edge.ExitConfig(after=[1], steps=0), [batch], **FEW)
    untrained = copy.deepcopy(model)
    install_exits(untrained, edge.ExitConfig(after=[1]))
    assert not torch.equal(exit_heads(untrained)[1].proj.weight, exit_heads(fresh)[1].proj.weight), "no fit"
    assert not all(torch.equal(p, q) for p, q in zip(exit_heads(fresh)[1].parameters(), exit_heads(e)[1].parameters())), \
        "heads did not train"
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), before.values()))


@pytest.mark.parametrize("case", ALL)
def test_one_pass_answers_every_exit_threshold(case):
    """The sweep's shortcut (take_exits on one full pass) gives what the real early-exiting run gives."""
    arch, model, batch = _tiny(case)
    n = len(arch.layers(model))
    m = edge.add_exits(model, edge.ExitConfig(after=list(range(1, n)), steps=3), [batch], **FEW)
    m = edge.add_skips(m, edge.SkipConfig(samples=2, threshold=0.9), [batch], **FEW)
    with torch.no_grad():
        full, trace = run(m, batch, exits=False, collect=True)
        confs = torch.cat([c for _, c in trace.exits.values()]).tolist()
        layers_seen = set()
        cs = sorted(set(confs))  # every decision the threshold can make: 0, 1 and midway between confidences
        # (not at a confidence itself: the early-exiting run recomputes it on fewer sequences, and a
        # last-bit difference there would flip a tie)
        for t in sorted({0.0, 1.0, *[(a + b) / 2 for a, b in zip(cs, cs[1:])]}):
            parts(m).set_config("exits", edge.ExitConfig(after=list(range(1, n)), threshold=t))
            want, want_trace = run(m, batch)
            got, flops, layer = edge.forward.take_exits(m, full, trace, t)
            torch.testing.assert_close(got, want)
            assert torch.equal(flops, want_trace.flops) and torch.equal(layer, want_trace.exit_layer)
            layers_seen |= set(layer.tolist())
    assert len(layers_seen) > 1


@pytest.mark.parametrize("name,mt", CASES)
def test_flops_equal_torch_count(name, mt):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    one = {k: v[:1] for k, v in batch.items()}  # unpadded: torch counts what a device would run
    m = edge.add_skips(model, edge.SkipConfig(samples=2), [batch], **FEW)
    trace = run(m, one)[1]
    assert float(trace.full_flops) == count_flops(arch.hf_output, model, one)


@pytest.mark.parametrize("name,mt", CASES)
def test_acm_exits_skips_together_one_budget(name, mt):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    few = edge.DistillConfig(repr_steps=2, gate_steps=2, e2e_steps=0)
    m = edge.acmize(model, edge.AcmConfig(budget=1.0, learners=2, gate_hidden=8), [batch], distill=few, progress=False)
    m = edge.add_exits(m, edge.ExitConfig(after=[1], steps=3), [batch], **FEW)
    m = edge.add_skips(m, edge.SkipConfig(samples=2), [batch], **FEW)
    result = edge.set_budget_(m, model, 0.8, [batch])
    chosen = result["chosen"]
    assert chosen["flops_frac"] <= 0.8
    assert len(result["sweep"]) > 10
    got = edge.budget.flops_and_quality(m, [batch], [arch.hf_output(model, batch)])
    assert got["flops_frac"] == pytest.approx(chosen["flops_frac"])
    with pytest.raises(EdgeError, match="least compute"):
        edge.set_budget_(m, model, 1e-4, [batch])


@pytest.mark.parametrize("case", ALL)
def test_save_load_round_trip(case, tmp_path):
    arch, model, batch = _tiny(case)
    m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=3, threshold=0.3), [batch], **FEW)
    m = edge.add_skips(m, edge.SkipConfig(samples=2, threshold=0.5), [batch], **FEW)
    edge.save(m, tmp_path / "m")
    back = edge.load(tmp_path / "m")
    a, ta = run(m, batch)
    b, tb = run(back, batch)
    assert torch.equal(a, b) and torch.equal(ta.flops, tb.flops)
    assert parts(back).configs == parts(m).configs


@pytest.mark.parametrize("bad,match", [
    (dict(after=[0]), "ExitConfig.after must be a non-empty list of integers >= 1"),
    (dict(after=[2]), "do not exist"), (dict(after=[7]), "do not exist"),
    (dict(after=[]), "non-empty"), (dict(after=[1, 1]), "increasing"), (dict(threshold=1.5), r"\[0, 1\]"),
    (dict(threshold=-0.1), r"\[0, 1\]"), (dict(steps=-1), "steps")])
def test_bad_exit_configs(bad, match):
    arch, model, batch = _tiny(("bert", "bert"))  # 2 layers: exits may sit after layer 1 only
    with pytest.raises(EdgeError, match=match):
        edge.add_exits(model, edge.ExitConfig(**{"after": [1], **bad}), [batch], **FEW)


@pytest.mark.parametrize("bad,match", [
    (dict(layers=[3]), "do not exist"), (dict(layers=[0]), "integers >= 1"), (dict(threshold=2.0), r"\[0, 1\]"),
    (dict(skip_rate=-0.5), r"\[0, 1\]"), (dict(target="head"), "attention, block"),
    (dict(samples=0), "SkipConfig.samples must be an integer >= 1")])
def test_bad_skip_configs(bad, match):
    arch, model, batch = _tiny(("bert", "bert"))
    with pytest.raises(EdgeError, match=match):
        edge.add_skips(model, edge.SkipConfig(**bad), [batch], **FEW)


@pytest.mark.parametrize("budget", [0.0, 1.5, -1, "half"])
def test_bad_budget(budget):
    arch, model, batch = _tiny(("bert", "bert"))
    m = edge.add_exits(model, edge.ExitConfig(after=[1], steps=1), [batch], **FEW)
    with pytest.raises(EdgeError, match=r"budget must be in \(0, 1\]"):
        edge.set_budget_(m, model, budget, [batch])


def test_exit_fit_is_the_least_squares_map():
    """fit_linear_ recovers an exact linear map, and on noisy data no nearby map has a lower error."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    w, b = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        fit_linear_(lin, x, x @ w.T + b, ridge=0.0)
    torch.testing.assert_close(lin.weight.data, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lin.bias.data, b, atol=1e-4, rtol=1e-4)
    y = torch.randn(200, 3, generator=g)
    with torch.no_grad():
        fit_linear_(lin, x, y, ridge=0.0)
    err = lambda: float(((lin(x) - y) ** 2).sum())
    best = err()
    with torch.no_grad():
        for _ in range(5):
            lin.weight.add_(1e-2 * torch.randn(3, 6, generator=g))
            assert err() > best


@pytest.mark.parametrize("name,mt", CASES)
def test_task_head_makes_a_classifier_of_the_embedding(name, mt):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    lin = nn.Linear(arch.output_dim(model), 4)
    m = edge.add_head(model, lin, labels=["a", "b", "c", "d"])
    s = edge.add_skips(model, edge.SkipConfig(samples=1), [batch], **FEW)  # run() on the model without the head
    with torch.no_grad():
        torch.testing.assert_close(arch.output(m, batch), lin(arch.hf_output(model, batch)))
        torch.testing.assert_close(run(m, batch)[0], lin(arch.hf_output(model, batch)))
        extra = run(m, batch)[1].full_flops - run(s, batch)[1].full_flops
    assert arch.output_kind(m) == "logits" and arch.output_kind(model) == "embedding"
    assert extra.tolist() == [2.0 * lin.in_features * 4] * len(extra)  # the head's FLOPs are counted
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in m.state_dict().items() if not k.startswith("edge_parts.head"))


def test_exits_trained_on_labels_learn_the_task():
    """With labels, a classifier's exit is the task's classifier at its depth: here the labels are a
    linear function of the first layer's pooled state, which the exit after layer 1 learns (a copy of
    the random final output, what exits learn without labels, would be right a third of the time)."""
    arch = edge.ARCHS.get("bert")
    model, _ = arch.tiny("bert")
    m = with_head(arch, model)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(3, 100, (16, 10), generator=g),
             "attention_mask": torch.ones(16, 10, dtype=torch.long)} for _ in range(8)]
    probe = nn.Sequential(nn.LayerNorm(32, elementwise_affine=False), nn.Linear(32, 3))
    with torch.no_grad():
        labels = [probe(run(m, b, exits=False, collect=True)[1].pooled[0]).argmax(-1) for b in data]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for y, trained in ((labels, True), (None, False)):
        e = edge.add_exits(m, edge.ExitConfig(after=[1], steps=20), data, labels=y, **FEW)
        with torch.no_grad():
            got = torch.cat([run(e, b, exits=False, collect=True)[1].exits[1][0].argmax(-1) for b in data])
        acc = float((got == torch.cat(labels)).float().mean())
        assert (acc >= 0.9) == trained, f"exit accuracy {acc:.2f} with labels={trained}"
        state = e.state_dict()
        assert all(torch.equal(state[k], v) for k, v in before.items()), "backbone or task head changed"


@pytest.mark.parametrize("call,match", [
    (lambda m, v, b: edge.add_head(v, nn.Linear(32, 3)), "already outputs logits"),
    (lambda m, v, b: edge.add_head(m, nn.Linear(5, 3)), "takes 5 features"),
    (lambda m, v, b: edge.add_head(m, "probe"), "torch.nn.Linear"),
    (lambda m, v, b: edge.add_head(edge.add_exits(m, edge.ExitConfig(after=[1], steps=1), [b], **FEW),
                                   nn.Linear(32, 3)), "before the exits"),
    (lambda m, v, b: edge.add_head(m, nn.Linear(32, 3), labels=["a"]), "3 class names"),
    (lambda m, v, b: edge.HeadConfig(classes=1), ">= 2"),
    (lambda m, v, b: edge.add_exits(m, edge.ExitConfig(after=[1]), [b], labels=[torch.tensor([0, 1])], **FEW),
     "outputs embeddings"),
    (lambda m, v, b: edge.add_exits(edge.add_head(m, nn.Linear(32, 3)), edge.ExitConfig(after=[1]), [b],
                                    labels=[torch.tensor([0, 1, 2])], **FEW), "one \\(B,\\) tensor per batch"),
    (lambda m, v, b: edge.add_exits(edge.add_head(m, nn.Linear(32, 3)), edge.ExitConfig(after=[1]), [b],
                                    labels=[torch.tensor([0, 3])], **FEW), "classes in 0..2"),
])
def test_bad_heads_and_labels(call, match):
    model, batch = edge.ARCHS.get("bert").tiny("bert")
    vit, _ = tiny_vit_classifier()
    with pytest.raises(EdgeError, match=match):
        call(model, vit, batch)
