"""ACM modules on tiny random models of every registered architecture."""

import pytest
import torch

import edge
from edge.acm import ACM, AcmConfig
from edge.flops import acm_flops, count_flops, ffn_flops, gate_flops, learner_flops
from tests.conftest import CASES

SMALL = AcmConfig(budget=0.5, learners=2, gate_hidden=8)


def tiny_acm_model(name, mt, config=SMALL, spread=True):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    acms = edge.install_acms(model, config)
    for a in acms:  # random weights; a spread-out (saturated) gate so that every k in 0..N occurs
        torch.nn.init.normal_(a.b2, std=0.1)
        if spread:
            a.gate[0].weight.data.mul_(4)
            a.gate[-1].weight.data.mul_(40)
    return arch, model.eval(), batch, acms


@pytest.mark.parametrize("name,mt", CASES)
def test_shapes_and_every_k(name, mt):
    arch, model, batch, acms = tiny_acm_model(name, mt)
    ref, _ = arch.tiny(mt)
    assert arch.output(model, batch).shape == arch.output(ref, batch).shape
    assert len(acms) == len(arch.layers(model))
    seen = torch.cat([a.last_k.flatten() for a in acms]).unique().tolist()
    assert seen == [0, 1, 2], f"gate choices {seen} do not cover k = 0..N"


@pytest.mark.parametrize("exact_top", [True, False])
@pytest.mark.parametrize("name,mt", CASES)
def test_gradients_reach_learners_and_gates(name, mt, exact_top):
    config = AcmConfig(budget=0.5, learners=4, gate_hidden=8, exact_top=exact_top)
    arch, model, batch, acms = tiny_acm_model(name, mt, config, spread=False)
    for a in acms:
        a.dense = True
    for forced in (None, *range(config.learners + 1)):  # the gate's own choices, then every k on every token
        for a in acms:
            a.forced_k = forced  # (the dense form still runs the gate: its soft choice carries the gradient)
        out = arch.output(model, batch)
        (out * torch.randn_like(out)).sum().backward()  # not a norm: BERT outputs are unit vectors
    for a in acms:
        for p in (a.w1, a.w2, a.b1, a.b2, *a.gate.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0
        assert a.top is None or all(p.grad is None for p in a.top.parameters())  # the original FFN stays so


def test_slices_reproduce_the_ffn_exactly():
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    ffn = arch.ffn(arch.layers(model)[0], model.config)
    acm = ACM(32, 64, AcmConfig(learners=4, gate_hidden=8), "gelu")
    acm.load_ffn_(ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias, torch.rand(64))
    acm.forced_k = 4
    x = torch.randn(5, 7, 32)
    expected = ffn.fc2(torch.nn.functional.gelu(ffn.fc1(x)))
    torch.testing.assert_close(acm(x), expected, atol=1e-5, rtol=1e-5)


def test_flop_accounting_equals_hand_count():
    d, f, n, g = 32, 64, 2, 8
    acm = ACM(d, f, AcmConfig(learners=n, gate_hidden=g), "gelu").eval()
    h = f // n
    assert ffn_flops(acm) == 4 * d * f
    assert gate_flops(acm) == 2 * d * g + 2 * g * (n + 1)
    assert learner_flops(acm) == 2 * d * h + 2 * h * d
    assert acm_flops(acm, torch.tensor([0, 1, 2])).tolist() == [560, 560 + 4096, 560 + 8192]
    # torch's own counter agrees with the hand count on the skipping path: the gated path pays the
    # gate plus the chosen learners; a forced (static) k runs no gate at all
    x = torch.randn(3, 5, d)
    with torch.no_grad():
        gated = count_flops(acm, x)
    assert gated == int(acm_flops(acm, acm.last_k).sum())
    assert gated >= 15 * gate_flops(acm)
    for k in range(n + 1):
        acm.forced_k = k
        with torch.no_grad():
            assert count_flops(acm, x) == 15 * k * learner_flops(acm)
        assert acm_flops(acm, torch.tensor(k)) == k * learner_flops(acm)


def test_budget_meter_counts_only_real_tokens():
    arch, model, batch, acms = tiny_acm_model("bert", "bert")
    meter = edge.measure_budget(model, [batch])
    assert meter.tokens == int(batch["attention_mask"].sum())
    mask = batch["attention_mask"].bool()
    ks = torch.stack([a.last_k[mask].float().mean() for a in acms])
    expected = [(gate_flops(a) + learner_flops(a) * k) / ffn_flops(a) for a, k in zip(acms, ks)]
    assert meter.per_module() == pytest.approx([float(e) for e in expected])


@pytest.mark.parametrize("bad", [
    dict(budget=0.0), dict(budget=1.01), dict(budget=-0.5), dict(learners=0), dict(learners=1.5),
    dict(gate_hidden=0), dict(init="zeros"), dict(gate="softmax")])
def test_config_rejects_bad_values(bad):
    with pytest.raises(edge.EdgeError) as e:
        AcmConfig(**bad)
    assert next(iter(bad)) in str(e.value)


def test_config_rejects_unknown_keys():
    with pytest.raises(edge.EdgeError, match="unknown AcmConfig keys"):
        AcmConfig.from_dict({"budget": 0.5, "budgett": 1})


def test_unsupported_architecture_lists_supported():
    with pytest.raises(edge.EdgeError, match="supported: bert, electra, roberta, vit, whisper"):
        edge.arch_for(torch.nn.Linear(2, 2))
