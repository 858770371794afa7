"""Structured pruning (edge.prune): the pruned model is the original with those units masked, its FLOPs
are counted exactly, it meets the budget, saves, loads, and composes with what comes after it."""
import random

import pytest
import torch

import edge
import export
from edge.errors import EdgeError
from edge.flops import count_flops
from edge.forward import run
from edge.parts import parts
from edge.pruning import importance, install_prune
from tests.conftest import CASES


def _tiny(name, mt, seed=0):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt, seed=seed)
    return arch, model, batch


def _masked_output(arch, model, batch, kept_heads, kept_neurons):
    """The ORIGINAL model's output with every unit that pruning removed zeroed by hooks."""
    hooks = []
    for layer, heads, neurons in zip(arch.layers(model), kept_heads, kept_neurons):
        h = arch.heads(layer)
        m = torch.zeros(h.q.out_features)
        for k in heads:
            m[k * h.head_dim:(k + 1) * h.head_dim] = 1
        hooks.append(h.o.register_forward_pre_hook(lambda _mod, a, m=m: (a[0] * m, *a[1:])))
        n = torch.zeros(arch.ffn(layer, model.config).fc1.out_features)
        n[neurons] = 1
        hooks.append(arch.ffn(layer, model.config).fc2.register_forward_pre_hook(lambda _mod, a, n=n: (a[0] * n, *a[1:])))
    try:
        return arch.output(model, batch)
    finally:
        for h in hooks:
            h.remove()


def _hand_flops(arch, model, pruned, t):
    """FLOPs of one unpadded sequence of t tokens through `pruned`, counted by hand from its config."""
    cfg = parts(pruned).config("prune")
    d = arch.dims(model)[0]
    dh = arch.heads(arch.layers(model)[0]).head_dim
    total = arch.fixed_flops(model, {"tokens": torch.ones(1, t, dtype=torch.bool)})
    for heads, f in zip(cfg.kept_heads, cfg.ffn_widths):
        w = len(heads) * dh
        total += 8 * d * w * t + 4 * w * t * t + 4 * d * f * t
    return total


@pytest.mark.parametrize("name,mt", CASES)
@pytest.mark.parametrize("flops", [0.85, 0.6, 0.45])
def test_pruned_model_is_the_masked_original_and_costs_what_a_hand_count_says(name, mt, flops):
    arch, model, batch = _tiny(name, mt)
    cfg = edge.PruneConfig(flops=flops, multiple=8, refit=False)  # (the refit changes the kept weights: below)
    pruned = edge.prune(model, cfg, [batch], progress=False)
    got = parts(pruned).config("prune")
    neurons = [torch.tensor(sorted(range(w))) for w in got.ffn_widths]
    # which neurons were kept is not recorded (only the widths): re-derive them from the weights
    for i, (orig, new) in enumerate(zip(arch.layers(model), arch.layers(pruned))):
        w0, w1 = arch.ffn(orig, model.config).fc1.weight, arch.ffn(new, pruned.config).fc1.weight
        neurons[i] = torch.tensor([int((w0 == row).all(1).nonzero()[0]) for row in w1])
    torch.testing.assert_close(arch.output(pruned, batch),
                               _masked_output(arch, model, batch, got.kept_heads, neurons), rtol=1e-5, atol=1e-5)
    one = {k: v[:1] for k, v in batch.items()}  # unpadded: torch counts what a device runs
    t = int(arch.embed(model, one)[1]["tokens"].sum())
    trace = run(pruned, one)[1]
    assert float(trace.flops) == _hand_flops(arch, model, pruned, t) == count_flops(arch.hf_output, pruned, one)
    assert float(trace.full_flops) == count_flops(arch.hf_output, model, one)
    assert pruned.edge_parts.config("prune").flops == flops
    assert float(trace.flops) < float(trace.full_flops)
    assert float(trace.flops / trace.full_flops) <= flops + 0.02  # (the budget is set at the calibration length)


@pytest.mark.parametrize("name,mt", CASES)
def test_the_refit_brings_the_pruned_model_closer_to_the_original(name, mt):
    arch, model, batch = _tiny(name, mt, seed=5)
    calib = [{k: _more(v, 8, seed) for k, v in batch.items()} for seed in range(2)]  # (more tokens than neurons)
    want = torch.cat([arch.output(model, b) for b in calib])
    err = {}
    for refit in (False, True):
        p = edge.prune(model, edge.PruneConfig(flops=0.55, multiple=8, refit=refit), calib, progress=False)
        got = torch.cat([arch.output(p, b) for b in calib])
        err[refit] = float((got - want).pow(2).sum())
    assert err[True] < err[False]


@pytest.mark.parametrize("name,mt", CASES)
def test_the_refit_is_the_same_whether_its_data_comes_in_one_batch_or_several(name, mt):
    # (the normal equations are summed batch by batch: memory does not grow with the data)
    arch, model, batch = _tiny(name, mt, seed=6)
    whole = {k: _more(v, 6, 1) for k, v in batch.items()}
    n = len(next(iter(whole.values())))
    cuts = sorted(random.Random(7).sample(range(1, n), 3))
    pieces = [{k: v[a:b] for k, v in whole.items()} for a, b in zip([0, *cuts], [*cuts, n])]
    cfg = edge.PruneConfig(flops=0.55, multiple=8, sequences=n, refit_sequences=n)
    one, several = (edge.prune(model, cfg, calib, progress=False) for calib in ([whole], pieces))
    a, b = one.state_dict(), several.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _direct_damage(arch, model, batch, where, cols, kd_weight):
    """The damage of zeroing input features `cols` of `where`, the whole model run once with the mask
    (no repeated batch, no layers shared with the original): what importance's batched passes must give."""
    from edge.pruning import _gram, _output_damage

    def trajectory(mask):
        hook = where.register_forward_pre_hook(lambda _mod, a: (a[0] * mask, *a[1:]))
        try:
            h, ctx = arch.embed(model, batch)
            grams = []
            for layer in arch.layers(model):
                h = arch.feed_forward(layer, arch.attention(layer, h, ctx), ctx)
                grams.append(_gram(h, ctx["tokens"]))
            return grams, arch.head(model, h, ctx), ctx["tokens"]
        finally:
            hook.remove()

    mask = torch.ones(where.in_features)
    ref, ref_out, tokens = trajectory(mask)
    mask[cols] = 0
    got, out, _ = trajectory(mask)
    pairs = tokens.sum(1).float() ** 2
    loss = sum(((g - r) ** 2).sum((1, 2)) / pairs for g, r in zip(got, ref))
    loss = loss + kd_weight * _output_damage(arch.output_kind(model), out, ref_out)
    return float(loss.mean())


@pytest.mark.parametrize("name,mt", CASES)
def test_batched_importance_is_each_unit_masked_alone(name, mt):
    arch, model, batch = _tiny(name, mt, seed=8)
    cfg = edge.PruneConfig(kd_weight=0.7)
    with torch.no_grad():
        heads, neurons = importance(model, batch, cfg, progress=False)
        rng = random.Random(name + mt)
        for i, layer in enumerate(arch.layers(model)):
            h, ffn = arch.heads(layer), arch.ffn(layer, model.config)
            k = rng.randrange(h.count)
            want = _direct_damage(arch, model, batch, h.o, slice(k * h.head_dim, (k + 1) * h.head_dim), 0.7)
            assert float(heads[i][k]) == pytest.approx(want, rel=1e-3, abs=1e-7)
            for n in rng.sample(range(ffn.fc1.out_features), 2):
                want = _direct_damage(arch, model, batch, ffn.fc2, [n], 0.7)
                assert float(neurons[i][n]) == pytest.approx(want, rel=1e-3, abs=1e-7)


def _more(v, times, seed):
    """v repeated `times` along the batch, its token ids redrawn (pixels and features jittered)."""
    g = torch.Generator().manual_seed(seed)
    v = v.repeat(times, *([1] * (v.dim() - 1)))
    if v.dtype == torch.long:
        return v if v.max() <= 1 else torch.randint(3, 100, v.shape, generator=g)
    return v + 0.5 * torch.randn(v.shape, generator=g)


@pytest.mark.parametrize("name,mt", CASES)
def test_pruning_saves_and_loads_exactly(tmp_path, name, mt):
    arch, model, batch = _tiny(name, mt, seed=3)
    pruned = edge.prune(model, edge.PruneConfig(flops=0.5, multiple=8), [batch], progress=False)
    loaded = edge.load(edge.save(pruned, tmp_path / "p"))
    a, b = pruned.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(arch.output(pruned, batch), arch.output(loaded, batch))


def test_a_layer_without_heads_keeps_its_residual_path():
    arch, model, batch = _tiny("bert", "bert")
    cfg = edge.PruneConfig(kept_heads=[[], [1]], ffn_widths=[64, 16])
    pruned = __import__("copy").deepcopy(model)
    install_prune(pruned, cfg)  # (the shape alone: the weights are the original's first rows)
    first = arch.layers(pruned)[0]
    assert arch.heads(first) is None
    h, ctx = arch.embed(pruned, batch)
    out = arch.attention(first, h, ctx)
    ln = first.attention.norm
    torch.testing.assert_close(out, ln(h + arch.layers(model)[0].attention.output.dense.bias))
    assert torch.isfinite(arch.output(pruned, batch)).all()


@pytest.mark.parametrize("seed", [1, 2])
def test_random_sizes_prune_and_meet_the_budget(seed):
    rnd = random.Random(seed)
    from transformers import AutoConfig, AutoModel

    heads, dh, layers = rnd.randint(2, 4), rnd.choice([4, 8]), rnd.randint(1, 3)
    f = rnd.choice([48, 96])
    cfg = AutoConfig.for_model("bert", vocab_size=50, hidden_size=heads * dh, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=f, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, attn_implementation="eager", add_pooling_layer=False).eval()
    ids = torch.randint(3, 50, (3, rnd.randint(5, 20)))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    flops = rnd.uniform(0.5, 0.9)
    pruned = edge.prune(model, edge.PruneConfig(flops=flops, multiple=4), [batch], progress=False)
    trace = run(pruned, batch)[1]
    assert float((trace.flops / trace.full_flops).max()) <= flops + 1e-9
    assert all(w % 4 == 0 for w in parts(pruned).config("prune").ffn_widths)


def test_importance_ranks_a_dead_neuron_last():
    arch, model, batch = _tiny("bert", "bert")
    fc2 = arch.ffn(arch.layers(model)[1], model.config).fc2
    with torch.no_grad():
        fc2.weight[:, 5] = 0  # neuron 5 of layer 2 writes nothing: removing it does no damage
    heads, neurons = importance(model, batch, edge.PruneConfig(), progress=False)
    # (0 up to rounding: the copies run batched, the reference alone)
    assert abs(float(neurons[1][5])) < 1e-4 * float(neurons[1].max())
    assert int(neurons[1].argmin()) == 5
    assert all(float(h.min()) > 0 for h in heads)


def test_prune_then_acmize_exits_and_int8():
    arch, model, batch = _tiny("bert", "bert")
    pruned = edge.prune(model, edge.PruneConfig(flops=0.6, multiple=8), [batch], progress=False)
    few = edge.DistillConfig(repr_steps=1, gate_steps=1, e2e_steps=1)
    acm = edge.acmize(pruned, edge.AcmConfig(budget=0.5, learners=2), [batch], distill=few, progress=False)
    widths = [a.n * a.h for a in edge.acm_modules(acm)]
    assert widths == list(parts(pruned).config("prune").ffn_widths)
    ex = edge.add_exits(acm, edge.ExitConfig(after=[1], steps=1), [batch], progress=False)
    q = edge.quantize(ex, edge.QuantConfig())
    assert parts(q).names() == ["acm", "exits", "prune", "quant"]
    assert torch.isfinite(edge.forward.output(q, batch)).all()


def test_bad_requests_are_one_clear_line():
    arch, model, batch = _tiny("bert", "bert")
    with pytest.raises(EdgeError, match="below the smallest model"):
        edge.prune(model, edge.PruneConfig(flops=0.05, multiple=8), [batch], progress=False)
    with pytest.raises(EdgeError, match="nothing could be pruned"):
        edge.PruneConfig(heads=False, neurons=False)
    pruned = edge.prune(model, edge.PruneConfig(flops=0.8, multiple=8), [batch], progress=False)
    with pytest.raises(EdgeError, match="pruned already"):
        edge.prune(pruned, edge.PruneConfig(), [batch], progress=False)
    acm = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=2), [batch],
                      distill=edge.DistillConfig(repr_steps=1, gate_steps=1, e2e_steps=1), progress=False)
    with pytest.raises(EdgeError, match="prune comes first"):
        edge.prune(acm, edge.PruneConfig(), [batch], progress=False)
    fresh = _tiny("bert", "bert")[1]
    with pytest.raises(EdgeError, match="does not fit"):
        install_prune(fresh, edge.PruneConfig(kept_heads=[[0], [7]], ffn_widths=[8, 8]))
    assert arch.heads(arch.layers(fresh)[0]).count == 2  # (nothing was touched)
    with pytest.raises(EdgeError, match="1 layer.s. but the model has 2"):
        install_prune(fresh, edge.PruneConfig(kept_heads=[[0]], ffn_widths=[8]))


def _pruned_adaptive(name, mt):
    """A tiny model pruned (its first layer to no heads, FFNs narrowed), then ACMs and an exit on it."""
    arch, model, batch = _tiny(name, mt)
    counts = [arch.heads(layer).count for layer in arch.layers(model)]
    widths = [arch.ffn(layer, model.config).fc1.out_features for layer in arch.layers(model)]
    cfg = edge.PruneConfig(flops=0.5, kept_heads=[[]] + [[c - 1] for c in counts[1:]],
                           ffn_widths=[w // 2 for w in widths])
    install_prune(model, cfg)
    few = edge.DistillConfig(repr_steps=1, gate_steps=1, e2e_steps=1)
    model = edge.acmize(model, edge.AcmConfig(budget=0.5, learners=2), [batch], distill=few, progress=False)
    for a in edge.acm_modules(model):
        a.gate_bias.fill_(0.1)
    return edge.add_exits(model, edge.ExitConfig(after=[1], steps=1), [batch], progress=False), batch


PRUNED_EXPORTS = [(r, m, c) for r in export.RUNTIMES.names() for m in export.RUNTIMES.get(r).modes
                  for c in (CASES if r == "onnx" and m == "graph" else [("bert", "bert")])]


@pytest.mark.slow
@pytest.mark.parametrize("runtime,mode,case", PRUNED_EXPORTS, ids=[f"{r}-{m}-{c[1]}" for r, m, c in PRUNED_EXPORTS])
def test_a_pruned_model_exports_on_every_branch(runtime, mode, case, tmp_path):
    model, batch = _pruned_adaptive(*case)
    a = export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode=mode)
    report = export.verify(a, model)
    assert report["max_abs_diff"] <= 1e-4 and not report["branch_mismatches"]
    assert report["k_seen"] == [0, 1, 2]


def test_calibration_batches_of_other_lengths_make_one_batch():
    from edge.pruning import _calibration

    arch, model, batch = _tiny("bert", "bert")
    short = {k: v[:, :5] for k, v in batch.items()}
    got = _calibration([short, batch, batch], 3)
    assert got["input_ids"].shape == (3, 12)
    assert got["attention_mask"][:2, 5:].sum() == 0 and torch.equal(got["input_ids"][2], batch["input_ids"][0])
