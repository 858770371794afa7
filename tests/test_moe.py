"""sigma-MoE layers (edge.moe) and their conversion (edge.moefy) on tiny random models of every
registered architecture, with random sizes and seeds."""
import random

import pytest
import torch

import edge
import export
from edge.adaptive import TOP_BIAS
from edge.flops import count_flops
from edge.moe import MODES, MoE, MoeConfig, install_moe, moe_modules
from edge.moe_convert import balanced_groups, expert_shares
from tests.conftest import CASES

FEW = edge.DistillConfig(gate_steps=2, e2e_steps=2, calib_iters=12)


def tiny_moe_model(name, mt, config):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    ref = arch.tiny(mt)[0].eval()
    moes = install_moe(model, config)
    for m in moes:  # a spread-out router, so that tokens differ in what they open
        for p in m.router.parameters():
            p.data.normal_(0, 2.0)
    return arch, model.eval(), ref, batch, moes


def _divisor(n, rng):
    return rng.choice([e for e in range(1, n + 1) if n % e == 0 and e <= 16])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name,mt", CASES)
def test_every_expert_open_is_the_ffn_exactly(name, mt, seed):
    rng = random.Random(seed)
    arch = edge.ARCHS.get(name)
    f = arch.ffn(arch.layers(arch.tiny(mt)[0])[0], arch.tiny(mt)[0].config).fc1.out_features
    config = MoeConfig(experts=_divisor(f, rng), router_hidden=rng.choice([0, 8]), mode=rng.choice(MODES))
    arch, model, ref, batch, moes = tiny_moe_model(name, mt, config)
    gen = torch.Generator().manual_seed(seed)
    for m in moes:  # grouped in a random order, with expert means: still every neuron once
        ffn_w1 = m.w1.detach().reshape(-1, m.d).clone()
        perm = torch.randperm(m.n * m.h, generator=gen)
        means = 0.1 * torch.randn(m.n, m.d, generator=gen)  # (what a closed expert gives: any, when all are open)
        m.load_ffn_(ffn_w1[perm], m.b1.detach().reshape(-1)[perm], m.w2.detach().reshape(-1, m.d)[perm].t(),
                    m.b2.detach().clone(), torch.argsort(perm), means)
        m.set_knob_(TOP_BIAS if m.mode == "adaptive" else m.n)
    with torch.no_grad():
        torch.testing.assert_close(arch.output(model, batch), arch.output(ref, batch), atol=1e-5, rtol=1e-5)
    assert all(bool((m.last_k == m.n).all()) for m in moes)


def test_each_expert_runs_only_on_its_tokens_and_reads_its_weights_once():
    torch.manual_seed(0)
    d, f, e = 16, 48, 6
    m = MoE(d, f, MoeConfig(experts=e, router_hidden=0, mode="adaptive"), "gelu").eval()
    x = torch.randn(40, d)
    calls = []
    run = m.run_expert
    m.run_expert = lambda xs, j: calls.append((j, xs.shape[0])) or run(xs, j)
    with torch.no_grad():
        y = m(x)
        chosen = m.select(m.gate_logits(x))
    assert sorted(j for j, _ in calls) == sorted({j for j, _ in calls})  # each expert at most once
    assert {j: rows for j, rows in calls} == {j: int(c) for j, c in enumerate(chosen.sum(0)) if c}
    expected = m.b2 + sum(torch.where(chosen[:, j:j + 1], run(x, j), 0) for j in range(e))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # and the FLOPs torch counts are the router's plus each token's experts'
    with torch.no_grad():
        assert count_flops(m, x) == int(m.flops(m.last_k).sum())


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_experts_and_router(mode):
    torch.manual_seed(0)
    m = MoE(16, 32, MoeConfig(experts=4, router_hidden=8, mode=mode, expert_dropout=0.0), "gelu")
    m.set_knob_(0.0 if mode == "adaptive" else 2)
    m.dense = True
    x = torch.randn(30, 16)
    (m(x).pow(2).mean() + m.expected_units().mean() + m.aux_loss()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (m.w1, m.w2, *m.router.parameters()))


def test_topk_takes_no_budget_gradient_into_its_router():
    """The budget loss of phase 3 (expected units) moves an adaptive router, not a top-K one (its count is K)."""
    for mode, moved in (("adaptive", True), ("topk", False)):
        m = MoE(8, 16, MoeConfig(experts=4, router_hidden=0, mode=mode, expert_dropout=0.0), "gelu")
        m.set_knob_(0.0 if mode == "adaptive" else 2)
        m.dense = True
        m(torch.randn(10, 8))
        units = m.expected_units().sum()
        assert units.requires_grad == moved, mode
        if moved:
            units.backward()
            assert bool(m.router.weight.grad.abs().sum() > 0)


@pytest.mark.parametrize("seed", range(3))
def test_balanced_groups_find_planted_groups_with_equal_sizes(seed):
    gen = torch.Generator().manual_seed(seed)
    groups, size, t = 4, 8, 64
    centres = torch.rand(groups, t, generator=gen) ** 4  # each group active on its own tokens
    truth = torch.randperm(groups * size, generator=gen) % groups
    features = centres[truth] + 0.05 * torch.rand(groups * size, t, generator=gen)
    order = balanced_groups(features, groups, seed)
    assert sorted(order.tolist()) == list(range(groups * size))
    found = truth[order].reshape(groups, size)
    assert all(len(set(row.tolist())) == 1 for row in found), found


def test_groups_that_do_not_divide_are_one_clear_error():
    with pytest.raises(edge.EdgeError, match="do not split into 5 equal experts"):
        balanced_groups(torch.rand(12, 3), 5)
    with pytest.raises(edge.EdgeError, match="not divisible by experts=5"):
        MoE(8, 12, MoeConfig(experts=5), "gelu")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", [0.3, 0.55, 0.8, 1.0])
def test_calibration_meets_the_budget(mode, budget):
    torch.manual_seed(0)
    m = MoE(32, 128, MoeConfig(experts=8, router_hidden=4, mode=mode), "gelu")
    scores = torch.randn(500, 8) * 3
    m.calibrate_(scores, budget, 40)
    got = float(m.fraction(m.select(scores).sum(-1).float().mean()))
    if budget >= 1.0:
        assert bool(m.select(scores).all())
    else:
        assert got <= budget + 1e-9
        step = m.unit_flops() / m.ffn_flops()  # topk: whole experts per token; adaptive: finer
        assert got > budget - (step if mode == "topk" else 0.02)


@pytest.mark.parametrize("name,mt", CASES)
def test_moefy_converts_calibrates_and_round_trips(tmp_path, name, mt):
    arch = edge.ARCHS.get(name)
    model, batch = arch.tiny(mt)
    moe = edge.moefy(model, MoeConfig(budget=0.6, experts=4, router_hidden=8), [batch], distill=FEW,
                     progress=False)
    assert len(moe_modules(moe)) == len(arch.layers(moe)) and not moe_modules(model)
    assert edge.measure_budget(moe, [batch]).ffn_fraction() <= 0.6 + 1e-6
    loaded = edge.load(edge.save(moe, tmp_path / "moe"))
    with torch.no_grad():
        assert torch.equal(arch.output(moe, batch), arch.output(loaded, batch))
    assert [m.knob_value() for m in moe_modules(loaded)] == [m.knob_value() for m in moe_modules(moe)]
    with pytest.raises(edge.EdgeError, match="adaptive already"):
        edge.acmize(moe, edge.AcmConfig(learners=2), [batch], distill=FEW, progress=False)


def test_a_closed_expert_gives_its_mean():
    torch.manual_seed(0)
    m = MoE(8, 16, MoeConfig(experts=4, router_hidden=0), "gelu").eval()
    x = torch.randn(50, 8)
    w1, b1, w2, b2 = torch.randn(16, 8), torch.randn(16), torch.randn(8, 16), torch.randn(8)
    means = torch.randn(4, 8)
    m.load_ffn_(w1, b1, w2, b2, None, means)
    for open_ in ([0, 2], [1], []):
        m.forced = torch.zeros(4, dtype=torch.bool)
        m.forced[open_] = True
        with torch.no_grad():
            y = m(x)
        parts = [torch.nn.functional.gelu(x @ w1[4 * e:4 * e + 4].t() + b1[4 * e:4 * e + 4]) @ w2[:, 4 * e:4 * e + 4].t()
                 if e in open_ else means[e].expand(50, 8) for e in range(4)]
        torch.testing.assert_close(y, b2 + sum(parts), atol=1e-5, rtol=1e-5)


def test_router_targets_are_each_experts_share_of_the_output():
    torch.manual_seed(0)
    m = MoE(8, 16, MoeConfig(experts=4), "relu")
    x = torch.randn(10, 8)
    y = sum(m.run_expert(x, e) for e in range(4))
    shares = expert_shares(m, x, y)
    for e in range(4):
        torch.testing.assert_close(shares[:, e], m.run_expert(x, e).pow(2).mean(-1) / y.pow(2).mean())


RUNTIME_MODES = [(r, m) for r in export.RUNTIMES.names() for m in export.RUNTIMES.get(r).modes]
ONE_PER_ADAPTER = [next(c for c in CASES if c[0] == name) for name in edge.ARCHS.names()]


@pytest.mark.parametrize("runtime,export_mode", RUNTIME_MODES)
@pytest.mark.parametrize("name,mt", ONE_PER_ADAPTER)
def test_moe_exports_with_its_routing_on_every_branch(tmp_path, name, mt, runtime, export_mode):
    """In every mode of every runtime, composed with exits and skips, the routing kept (graph: the
    per-expert gathers are in the program; routed: the driver gathers each expert's tokens for its
    method): the checks force no expert, every expert, each expert alone and the prices and K around the
    model's own, all equal to eager. The MoE's own mode (adaptive or top-K) drawn per case."""
    rng = random.Random(f"{name}{runtime}{export_mode}")
    e, mode = rng.choice([2, 4]), rng.choice(MODES)
    arch, model, _, batch, moes = tiny_moe_model(name, mt, MoeConfig(experts=e, router_hidden=rng.choice([0, 8]), mode=mode))
    for m in moes:
        m.set_knob_(rng.uniform(-0.5, 0.5) if mode == "adaptive" else rng.randint(1, e - 1))
    model = edge.add_exits(model, edge.ExitConfig(after=[1], steps=2, threshold=0.5), [batch], progress=False)
    model = edge.add_skips(model, edge.SkipConfig(samples=2, threshold=0.5), [batch], progress=False)
    a = export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode=export_mode)
    assert a.plan["mode"] == export_mode and [f["experts"] for f in a.plan["control_flow"]["moes"]] == [e] * len(moes)
    if export_mode == "graph":
        stats = export.RUNTIMES.get(runtime).stats(a.path, a.plan["methods"])
        assert stats["branches"] > 0 and stats["gathers"] > 0
    else:  # one experts method per MoE, one input and output per expert
        decisions = [s["then"] for s in a.plan["routed"]["segments"] if s["then"]["kind"] == "moe"]
        assert sorted({d["moe"] for d in decisions}) == list(range(len(moes))) and all(d["n"] == e for d in decisions)
    report = export.verify(a, model)
    assert report["max_abs_diff"] <= 1e-4 and not report["branch_mismatches"]
    assert {0, 2 ** e - 1} | {2 ** i for i in range(e)} <= set(report["k_seen"])  # none, all, each alone
    cases = {c["case"] for c in a.plan["checks"]}
    assert {"no expert", "every expert", *(f"expert {i} alone" for i in range(e))} <= cases


@pytest.mark.parametrize("export_mode", export.RUNTIMES.get("executorch").modes)
def test_moe_artifact_on_the_native_runner(tmp_path, export_mode):
    """The C++ runner (profiler/runner) runs a MoE's program (graph: the gathers in it; routed: its own
    driver gathers each expert's tokens) on every bundled case with eager's outputs and routes, and
    reports the share of experts run."""
    import subprocess

    from device.measure import read_records
    from profiler import native

    arch, model, _, batch, moes = tiny_moe_model("bert", "bert", MoeConfig(experts=4, router_hidden=8))
    a = export.to_executorch(model, tmp_path / "a", batch, progress=False, mode=export_mode)
    assert a.plan["mode"] == export_mode
    done = subprocess.run([str(native.ensure()), str(a.path), "--runs", "1", "--branch-runs", "1", "--no-ops"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-500:]
    branches = [r for r in read_records(done.stdout) if r["kind"] == "branch"]
    assert len(branches) == len(a.plan["checks"]) and all(r["outputs_match"] for r in branches)
    share = {r["case"]: r["branch"]["moe_fraction"] for r in branches}
    assert share["no expert"] == 0.0 and share["every expert"] == 1.0 and share["expert 2 alone"] == 0.25


def test_level_quality_reads_a_moe_artifact_against_every_expert_open(tmp_path):
    from edge.moe import FORCE
    from profiler.presets import level_quality

    arch, model, _, batch, moes = tiny_moe_model("bert", "bert", MoeConfig(experts=4, router_hidden=8))
    own = torch.stack([m.knob_row() for m in moes])
    every, none = own.clone(), own.clone()
    every[:, 1:], none[:, 1:] = -FORCE, FORCE
    levels = [{"name": n, "experts": k.reshape(-1).tolist()} for n, k in (("own", own), ("every", every), ("none", none))]
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False, levels=levels)
    inputs = [[batch[s["name"]][i:i + 1].numpy() for s in a.plan["inputs"]] for i in range(len(batch["input_ids"]))]
    q = level_quality(a, inputs)
    assert q["every"] == pytest.approx(1.0, abs=1e-5) and q["none"] < q["own"] <= q["every"]


def test_graph_routes_are_the_eager_forward():
    """The export graph's gathers (both forms) give the skipping forward's output, and its routes are
    the experts each token ran, at every setting of the knob."""
    for mode in MODES:
        arch, model, _, batch, moes = tiny_moe_model("bert", "bert", MoeConfig(experts=4, router_hidden=8, mode=mode))
        x = torch.randn(2, 5, moes[0].d)
        m = moes[0]
        for value in ((-1e4, -0.5, 0.0, 0.5, 1e4) if mode == "adaptive" else range(5)):
            m.set_knob_(value)
            with torch.no_grad():
                want = m(x)
                for spare in (False, True):
                    y, routes = m.gathered(x, m.knob_row(), spare)
                    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
                    assert torch.equal(m.chosen_of(routes).sum(-1), m.last_k.reshape(-1))


def test_prune_then_moefy_exits_int8_export_routed(tmp_path):
    """Composes: a pruned model's FFNs (narrower, each layer its own width) become MoEs, an exit and int8
    on top; the routed export checked on every branch against the live model."""
    from edge.parts import parts

    model, batch = edge.ARCHS.get("bert").tiny("bert")
    pruned = edge.prune(model, edge.PruneConfig(flops=0.6, multiple=8), [batch], progress=False)
    moe = edge.moefy(pruned, MoeConfig(budget=0.6, experts=4, router_hidden=8), [batch], distill=FEW, progress=False)
    assert [m.n * m.h for m in moe_modules(moe)] == list(parts(pruned).config("prune").ffn_widths)
    q = edge.quantize(edge.add_exits(moe, edge.ExitConfig(after=[1], steps=1), [batch], progress=False),
                      edge.QuantConfig())
    assert set(parts(q).names()) == {"prune", "moe", "exits", "quant"}
    a = export.to_runtime(q, "onnx", tmp_path / "a", batch, progress=False, mode="routed")
    report = export.verify(a, q)
    assert report["max_abs_diff"] <= a.plan["tolerance"] and not report["branch_mismatches"]
    assert {0, 15} | {1, 2, 4, 8} <= set(report["k_seen"])


@pytest.mark.parametrize("runtime,mode", [("onnx", m) for m in MODES] + [("executorch", "adaptive")])
def test_int8_moe_saves_loads_and_exports_with_its_routing(tmp_path, runtime, mode):
    """8da8w of a MoE: each expert's two Linears quantized (its output bias and the router stay fp32),
    close to the fp32 model, saved and loaded bit-exact, exported in the runtime's default mode and
    checked on every branch against the same quantization in eager."""
    arch, model, _, batch, moes = tiny_moe_model("bert", "bert", MoeConfig(experts=4, router_hidden=8, mode=mode))
    for m in moes:
        m.set_knob_(0.0 if mode == "adaptive" else 2)
    q = edge.quantize(model, edge.QuantConfig("8da8w"))
    qm = moe_modules(q)
    assert all(m.units_replaced() and m.w1 is None for m in qm)
    assert all(type(m.router[0]).__name__ == "Linear" for m in qm)  # (a decision: not in the default cover)
    with torch.no_grad():
        want, got = arch.output(model, batch), arch.output(q, batch)
    assert float((want - got).abs().max()) < 0.05
    edge.save(q, tmp_path / "q")
    back = edge.load(tmp_path / "q")
    with torch.no_grad():
        torch.testing.assert_close(arch.output(back, batch), got, atol=0, rtol=0)
    a = export.to_runtime(back, runtime, tmp_path / "a", batch, progress=False)
    assert a.plan["precision"] == "8da8w" and a.plan["mode"] == export.RUNTIMES.get(runtime).mode  # (its default)
    report = export.verify(a, back)
    assert not report["branch_mismatches"] and {0, 15} <= set(report["k_seen"])
