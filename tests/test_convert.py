"""Distillation on tiny models: the phases train what they should and the budget knob holds."""
from dataclasses import replace

import pytest
import torch

import edge
from edge.parts import parts
from edge.acm import GATE_SCORES
from edge.acm import ACM
from edge.adaptive import TOP_BIAS
from edge.convert import PRECISIONS, _prefix_loss, gate_labels, prefix_errors
from edge.forward import output
from tests.conftest import CASES

FEW = edge.DistillConfig(repr_steps=3, gate_steps=3, e2e_steps=3, calib_iters=10)


@pytest.mark.parametrize("gate", GATE_SCORES)
@pytest.mark.parametrize("name,mt", CASES)
def test_acmize_returns_new_model_within_budget(name, mt, gate):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acm = edge.acmize(model, edge.AcmConfig(budget=0.6, learners=2, gate_hidden=4, gate=gate), [batch],
                      distill=FEW, progress=False)
    assert acm is not model and not edge.acm_modules(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the original was modified"
    assert len(edge.acm_modules(acm)) == len(arch.layers(model))
    assert edge.measure_budget(acm, [batch]).ffn_fraction() <= 0.6


def test_gate_labels_follow_the_ratio_rule():
    # err_k for k = 0..3; label = smallest k with err_k < 1.2 * err_{k+1}
    errors = torch.tensor([[8.0, 4.0, 3.9, 1.0],   # 4 -> 3.9 is close: k = 1
                           [8.0, 4.0, 2.0, 1.0],   # always halves: k = N = 3
                           [1.0, 0.95, 0.5, 0.1]])  # 1 -> 0.95 close already: k = 0
    assert gate_labels(errors, 1.2).tolist() == [1, 3, 0]


def test_prefix_errors_shape_and_k0():
    acm = edge.ACM(8, 16, edge.AcmConfig(learners=4, gate_hidden=4), "relu")
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    err = prefix_errors(acm, x, y)
    assert err.shape == (5, 5)
    torch.testing.assert_close(err[:, 0], y.pow(2).mean(-1))


@pytest.mark.parametrize("gate", GATE_SCORES)
def test_calibration_moves_the_knob_monotonically(gate):
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    acms = edge.install_acms(model, edge.AcmConfig(learners=4, gate_hidden=4, gate=gate))
    for a in acms:
        a.gate[-1].weight.data.mul_(20)
    fracs = []
    for budget in (0.9, 0.6, 0.3):
        edge.calibrate_budget_(model, [batch], budget)
        fracs.append(edge.measure_budget(model, [batch]).ffn_fraction())
        assert fracs[-1] <= budget
    assert fracs[0] > fracs[1] > fracs[2]


@pytest.mark.parametrize("exact_top", [True, False])
@pytest.mark.parametrize("gate", GATE_SCORES)
@pytest.mark.parametrize("name,mt", CASES)
def test_the_top_of_the_knob_is_the_original(name, mt, gate, exact_top):
    """Budget 1.0 takes k = N on every token, whatever the gate's scores. With exact_top that runs the
    original FFN, so the converted model (every phase trained) is the original there; without, every
    learner runs, and they start as the FFN's exact partition, so before training moves them the model
    is the original too (bench/knob.py measures how far a conversion's top then stays)."""
    model, batch = edge.ARCHS.get(name).tiny(mt)
    steps = dict(repr_steps=3, gate_steps=2, e2e_steps=3) if exact_top else dict(repr_steps=0, gate_steps=2, e2e_steps=0)
    acm = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=2, gate_hidden=4, gate=gate, exact_top=exact_top),
                      [batch], distill=edge.DistillConfig(**steps, calib_iters=10), progress=False)
    if exact_top:
        untrained = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=2, gate_hidden=4, gate=gate), [batch],
                                distill=edge.DistillConfig(repr_steps=0, gate_steps=0, e2e_steps=0), progress=False)
        assert not any(torch.equal(a.w1, u.w1) for a, u in zip(edge.acm_modules(acm), edge.acm_modules(untrained)))
    for a in edge.acm_modules(acm):
        a.gate[-1].weight.data.mul_(50)  # wide score gaps: a fixed low bias would leave tokens below the top
    edge.calibrate_budget_(acm, [batch], 1.0)
    with torch.no_grad():
        got, want = output(acm, batch), output(model, batch)
    assert all(bool((a.last_k == a.n).all()) for a in edge.acm_modules(acm))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_phase_1_weights_the_top_prefix():
    errors = torch.rand(7, 5)  # prefixes k = 0..4
    torch.testing.assert_close(_prefix_loss(errors, 1.0), errors[:, 1:].mean())
    torch.testing.assert_close(_prefix_loss(errors, 0.0), errors[:, 1:-1].mean())
    torch.testing.assert_close(_prefix_loss(errors, 5.0), (errors[:, 1:-1].sum(-1) + 5 * errors[:, -1]).mean() / 8)


@pytest.mark.parametrize("exact_top", [True, False])
@pytest.mark.parametrize("knob", [(), (1.0, 0.3)])
def test_phase_3_trains_every_budget_of_the_knob(monkeypatch, knob, exact_top):
    """Each phase-3 step runs at a budget drawn from the knob and the target, with that budget's gate
    biases; knob=() trains at the target alone (the ACM paper's recipe). With exact_top, 1.0 is not
    drawn: there every token runs the frozen original FFN, nothing to train."""
    seen = set()  # (module, gate bias) of every phase-3 forward
    dense = ACM._forward_dense
    monkeypatch.setattr(ACM, "_forward_dense", lambda self, x, logits: seen.add((id(self), float(self.gate_bias)))
                        or dense(self, x, logits))
    model, batch = edge.ARCHS.get("bert").tiny("bert")
    acm = edge.acmize(model, edge.AcmConfig(budget=0.6, learners=4, gate_hidden=4, exact_top=exact_top), [batch],
                      progress=False, distill=replace(FEW, e2e_steps=12, knob=knob))
    per_module = [{b for m, b in seen if m == id(a)} for a in edge.acm_modules(acm)]
    top = 1.0 in knob and not exact_top
    levels = len({0.6, *knob}) - (1.0 in knob and exact_top)
    assert [len(b) for b in per_module] == [levels] * len(per_module)  # each level drawn, its own biases
    assert all((TOP_BIAS in b) == top for b in per_module)  # the top: every learner
    assert edge.measure_budget(acm, [batch]).ffn_fraction() <= 0.6  # and the model is left at its target


def test_retarget_moves_the_budget_and_keeps_the_source():
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    cfg = edge.AcmConfig(budget=0.9, learners=4, gate_hidden=4)
    acm = edge.acmize(model, cfg, [batch], distill=FEW, progress=False)
    before = {k: v.clone() for k, v in acm.state_dict().items()}
    low = edge.retarget(acm, model, 0.4, [batch], distill=FEW, progress=False)
    assert parts(low).config('acm').budget == 0.4 and parts(acm).config('acm').budget == 0.9
    assert edge.measure_budget(low, [batch]).ffn_fraction() <= 0.4
    assert all(torch.equal(v, acm.state_dict()[k]) for k, v in before.items())
    with pytest.raises(edge.EdgeError, match="budget"):
        edge.retarget(acm, model, 1.5, [batch], distill=FEW, progress=False)


def test_acmize_at_a_budget_is_phases_1_2_then_retarget():
    """What bench/acm_fidelity.py measures per budget (phases 1-2 once, then retarget) is exactly what
    acmize at that budget (`edge acmize`, `edge demo`) gives."""
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    # three different batches and 2 + 3 steps before phase 3, so that where phase 3 starts in the data matters
    batches = [batch, {k: v.flip(0) for k, v in batch.items()}, {**batch, "input_ids": batch["input_ids"].roll(3, 1)}]
    few = edge.DistillConfig(repr_steps=2, gate_steps=3, e2e_steps=3, calib_iters=10)
    direct = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=4, gate_hidden=4), batches, distill=few,
                         progress=False)
    shared = edge.acmize(model, edge.AcmConfig(budget=1.0, learners=4, gate_hidden=4), batches,
                         distill=replace(few, e2e_steps=0), progress=False)
    moved = edge.retarget(shared, model, 0.5, batches, distill=few, progress=False)
    assert all(torch.equal(v, moved.state_dict()[k]) for k, v in direct.state_dict().items())


@pytest.mark.parametrize("tune_backbone", [False, True])
def test_end_to_end_phase_tunes_the_backbone_only_when_asked(tune_backbone):
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    acm = edge.acmize(model, edge.AcmConfig(budget=0.9, learners=2, gate_hidden=4), [batch],
                      distill=FEW, progress=False)
    tuned = edge.retarget(acm, model, 0.6, [batch], progress=False,
                          distill=edge.DistillConfig(e2e_steps=3, calib_iters=10, tune_backbone=tune_backbone))
    own = {n for n, _ in acm.named_parameters() if ".intermediate." in n}  # the ACMs (BERT: intermediate)
    changed = [n for n, p in tuned.named_parameters()
               if n not in own and not torch.equal(p, dict(acm.named_parameters())[n])]
    assert bool(changed) == tune_backbone, changed
    with pytest.raises(edge.EdgeError, match="tune_backbone"):
        edge.DistillConfig(tune_backbone="yes")


@pytest.mark.parametrize("precision", ["auto", *PRECISIONS.names()])
def test_every_precision_trains_fp32_weights(precision):
    arch = edge.ARCHS.get("bert")
    model, batch = arch.tiny("bert")
    distill = edge.DistillConfig(repr_steps=3, gate_steps=3, e2e_steps=3, calib_iters=10, precision=precision)
    assert distill.resolved().precision in PRECISIONS.names() and distill.resolved().repr_steps == 3
    default = edge.DistillConfig(precision=precision).resolved()  # the precision's own step counts
    own = PRECISIONS.get(default.precision)
    assert (default.repr_steps, default.e2e_steps) == (own.repr_steps, own.e2e_steps)
    alone = edge.DistillConfig(precision=precision).resolved(phase1=False)  # moefy's: phase 1's time goes to phase 3
    assert alone.e2e_steps == own.e2e_alone_steps > own.e2e_steps and alone.resolved().e2e_steps == alone.e2e_steps
    cfg = edge.AcmConfig(budget=0.6, learners=2, gate_hidden=4)
    acm = edge.acmize(model, cfg, [batch], distill=distill, progress=False)
    untrained = edge.acmize(model, cfg, [batch], progress=False,
                            distill=edge.DistillConfig(repr_steps=0, gate_steps=0, e2e_steps=0, calib_iters=10))
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in acm.parameters())
    for a, u in zip(edge.acm_modules(acm), edge.acm_modules(untrained)):
        assert not torch.equal(a.w1, u.w1), "the learners did not train"
    assert edge.measure_budget(acm, [batch]).ffn_fraction() <= 0.6
    with pytest.raises(edge.EdgeError, match="precision"):
        edge.DistillConfig(precision="fp16")
