"""Export on tiny random models of every registered architecture, for every registered runtime and
mode: the real exporter, the real runtime, parity with eager on inputs that force every branch."""
import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import edge
import export
from edge.forward import run
from edge.errors import EdgeError
from export.artifact import write_plan
from export.graph import GraphModel
from export.lower import _inputs, _trace
from device.driver import drive
from export.routed import Routed
from tests.conftest import CASES
from tests.test_acm import SMALL, tiny_acm_model

RUNTIMES = export.RUNTIMES.names()
MODES = export.MODES
# Every model type in every mode but one: the in-graph mode lowers an adapter's own code (its layers
# in conds, the ACM gathers) the same way for every model type it serves, so it runs on the first
# model type of each adapter; what model types differ in (embeddings, activations) is lowered and
# checked for each of them in the routed mode, on every runtime.
ONE_PER_ADAPTER = [c for i, c in enumerate(CASES) if c[0] not in {name for name, _ in CASES[:i]}]
CASE_MODES = [(c, m) for c in CASES for m in MODES if m != "graph" or c in ONE_PER_ADAPTER]
GATES = {  # gate type -> what the tiny model carries
    "exits": dict(exits=True),
    "skip-attention": dict(skips="attention"),
    "skip-block": dict(skips="block", acm=True),
    "acm": dict(acm=True),
    "head-exits": dict(head=True, exits=True),  # an embedding model made a classifier: classifier exits
    "moe": dict(moe=True, exits=True),  # sigma-MoE layers (a bit mask of experts per token) and an exit
}
ALL_GATES = dict(exits=True, skips="attention", acm=True)  # the model of test_every_architecture_exports_with_all_gates


def adaptive(case, exits=False, skips=None, acm=False, head=False, threshold=0.5, moe=False):
    name, mt = case
    if acm:  # True, or an AcmConfig
        arch, model, batch, _ = tiny_acm_model(name, mt, *([acm] if isinstance(acm, edge.AcmConfig) else []))
    elif moe:  # True (4 experts, adaptive), or a MoeConfig
        from tests.test_moe import tiny_moe_model

        config = moe if isinstance(moe, edge.MoeConfig) else edge.MoeConfig(experts=4, router_hidden=8)
        arch, model, _, batch, moes = tiny_moe_model(name, mt, config)
        for m in moes:  # a price in the middle of the router's scores: tokens open some experts, not all
            m.set_knob_(0.0 if config.mode == "adaptive" else config.experts // 2)
    else:
        arch = edge.ARCHS.get(name)
        model, batch = arch.tiny(mt)
    if head:
        model = edge.add_head(model, torch.nn.Linear(arch.output_dim(model), 3))
    if exits:
        model = edge.add_exits(model, edge.ExitConfig(after=[1], steps=2, threshold=threshold), [batch], progress=False)
    if skips:
        model = edge.add_skips(model, edge.SkipConfig(samples=2, target=skips, threshold=threshold), [batch],
                               progress=False)
    return model, batch


@pytest.mark.parametrize("case", CASES)
def test_graph_model_is_the_eager_forward(case):
    """The export graph in eager mode gives what edge.run gives, output and branch, at every setting."""
    for t in (0.0, 0.5, 1.0):
        model, batch = adaptive(case, exits=True, skips="attention", acm=True, threshold=t)
        g = GraphModel(model)
        for i in range(len(next(iter(batch.values())))):
            one = {k: v[i: i + 1] for k, v in batch.items()}
            with torch.no_grad():
                out, layer, skipped, ks = g(*[one[n] for n in g.input_names], *g.knobs().values())
                ref, trace = run(model, one)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            assert layer.tolist() == trace.exit_layer.tolist()
            assert skipped.tolist() == trace.skipped[0].tolist()


@pytest.mark.parametrize("gate", [*GATES, "all"])
@pytest.mark.parametrize("case", CASES)
def test_routed_driver_is_the_graph(case, gate):
    """The routed plan, driven over the eager segments, takes the graph's branches and gives its
    outputs on every branch-forcing case: the cut at the gates loses nothing."""
    model, batch = adaptive(case, **(GATES[gate] if gate in GATES else dict(exits=True, skips="attention", acm=True)))
    g = GraphModel(model)
    routed, args = Routed(g), _inputs(g, batch)
    methods = {s["method"] for s in routed.section()["segments"]}
    units = {s["then"].get("learners") or s["then"].get("experts") for s in routed.segments if s["then"]["kind"] in ("acm", "moe")}
    assert methods | units == set(routed.modules)
    for name, knobs in export.force_cases(g):
        with torch.no_grad():
            want = [t.numpy() for t in g(*args, *knobs.values())]
        got = drive(routed.section(), len(g.layers), routed.eager(), {n: a.numpy() for n, a in zip(g.input_names, args)},
                    {k: v.numpy() for k, v in knobs.items()})
        np.testing.assert_allclose(got[0], want[0], atol=1e-5, err_msg=name)
        for w, o in zip(want[1:], got[1:]):
            assert o.astype(np.int64).tolist() == w.astype(np.int64).tolist(), name


@pytest.mark.parametrize("case", ONE_PER_ADAPTER)
def test_routed_methods_carry_only_the_weights_they_read(case):
    """torch.export lifts all of the model's weights into every segment; the traced methods keep only
    those their graph reads, and still compute what the segment computes."""
    model, batch = adaptive(case, **ALL_GATES)
    g = GraphModel(model)
    args = _inputs(g, batch)
    with torch.no_grad():
        eps, section = _trace(g, "routed", args, g.knobs(), 64)
        first = Routed(g).modules[section["routed"]["segments"][0]["method"]]
        want = first(*args)
        got = eps[section["routed"]["segments"][0]["method"]].module()(*args)
    for name, ep in eps.items():
        weights = [s for s in ep.graph_signature.input_specs if s.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")]
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        assert weights and all(placeholders[s.arg.name].users for s in weights), name
        assert len(weights) < len(model.state_dict()), name
    for w, o in zip(want, got):
        torch.testing.assert_close(o, w)


def takes(runtime: str, mode: str) -> bool:
    return mode in export.RUNTIMES.get(runtime).modes


ALL_GATE_EXPORTS = [(r, c, m) for r in RUNTIMES for c, m in CASE_MODES if takes(r, m)]


@pytest.mark.parametrize("runtime,case,mode", ALL_GATE_EXPORTS, ids=[f"{r}-{c[1]}-{m}" for r, c, m in ALL_GATE_EXPORTS])
def test_every_architecture_exports_with_all_gates(runtime, mode, case, tmp_path, bert_all_gates):
    if case == ("bert", "bert") and mode == export.RUNTIMES.get(runtime).mode:  # (the profiler tests' artifact)
        model, batch, a = bert_all_gates(runtime)
    else:
        model, batch = adaptive(case, **ALL_GATES)
        a = export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode=mode)
    stats = export.RUNTIMES.get(runtime).stats(a.path, a.plan["methods"])
    if mode == "graph":  # the exits, skips and ACM gathers are in the program, not unrolled
        assert stats["branches"] > 0 and stats["gathers"] > 0
    else:
        assert stats["branches"] == stats["gathers"] == 0
        if runtime == "executorch":  # XNNPACK takes every method whole (LayerNorm, pooling, masks included)
            assert stats["delegates"] == len(a.plan["methods"]), stats
        if runtime == "litert":  # XNNPACK takes a part of every signature (not the int64 casts, lookups, argmax)
            assert stats["delegates"] == len(a.plan["methods"]) and stats["kernels"] > 0, stats
    report = export.verify(a, model)  # against the live model, not only the bundled expectations
    assert report["max_abs_diff"] <= 1e-4 and not report["branch_mismatches"]
    here = str(Path(export.__file__).resolve().parents[1]).encode()  # no source path of the exporting machine
    assert not [f.name for f in a.path.rglob("*") if f.is_file() and here in f.read_bytes()]
    checks = {c["case"]: c for c in a.plan["checks"]}
    assert checks["exit after 1"]["exit_layer"] == 1 and checks["full"]["exit_layer"] == 2
    assert checks["skip all"]["skipped"] == [1, 1] and checks["full"]["skipped"] == [0, 0]
    assert report["k_seen"] == [0, 1, 2]  # every k of the 2-learner ACMs ran for some token
    if edge.ARCHS.get(case[0]).seq_inputs:  # the token count is dynamic: shorter inputs run as they are
        g, go = GraphModel(model), a.runner()
        for n in (3, 7):
            one = {k: v[:1, :n] for k, v in batch.items()}
            args = [one[name] for name in g.input_names] + list(g.knobs().values())
            if not export.RUNTIMES.get(runtime).dynamic_tokens:  # (the example's count, fixed: said, not run)
                with pytest.raises(EdgeError, match=rf"input {g.input_names[0]} must have shape \(1, {batch[g.input_names[0]].shape[1]}\)"):
                    go([x.numpy() for x in args])
                continue
            with torch.no_grad():
                ref = g(*args)
            got = go([x.numpy() for x in args])
            np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-5)
            assert got[1].tolist() == ref[1].tolist()
    if runtime == "executorch":  # the native runner (C++) too gives eager's outputs on every branch, in both modes
        records = native_records(a.path)
        branches = [r for r in records if r["kind"] == "branch"]
        assert [b["case"] for b in branches] == list(checks) and all(b["outputs_match"] for b in branches), branches
        assert [b["branch"]["exit_layer"] for b in branches] == [c["exit_layer"] for c in checks.values()]


def native_records(path) -> list[dict]:
    import subprocess

    from profiler import native

    done = subprocess.run([str(native.ensure()), str(path), "--runs", "1", "--warmup", "0", "--branch-runs", "1", "--no-ops"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


# A gate type alone in the in-graph mode only where that model does not hold it already (its
# in-graph export on bert lowers and checks exits, attention skips and ACMs together); the routed
# mode for every gate type alone.
GATE_MODES = [(g, m) for g in GATES for m in MODES
              if m != "graph" or any(ALL_GATES.get(k) != v for k, v in GATES[g].items())]
GATE_EXPORTS = [(r, g, m) for r in RUNTIMES for g, m in GATE_MODES if takes(r, m)]


SUMMED_TOP = replace(SMALL, learners=4, exact_top=False)  # k = N runs every learner (before AcmConfig.exact_top)


@pytest.mark.parametrize("mode", MODES)
def test_acms_without_the_exact_top_export(mode, tmp_path):
    """The other form of k = N (every learner, their sum), on every branch; the exact top is every other test's."""
    model, batch = adaptive(("bert", "bert"), acm=SUMMED_TOP)
    a = export.to_runtime(model, "onnx", tmp_path / "a", batch, progress=False, mode=mode)
    assert export.verify(a)["max_abs_diff"] <= 1e-4
    if mode == "routed":
        assert all(s["then"]["top"] is False for s in a.plan["routed"]["segments"] if s["then"]["kind"] == "acm")


@pytest.mark.parametrize("runtime,gate,mode", GATE_EXPORTS, ids=[f"{r}-{g}-{m}" for r, g, m in GATE_EXPORTS])
def test_every_gate_type_exports(runtime, mode, gate, tmp_path):
    model, batch = adaptive(("bert", "bert"), **GATES[gate])
    a = export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode=mode)
    assert export.verify(a)["max_abs_diff"] <= 1e-4
    stats = export.RUNTIMES.get(runtime).stats(a.path, a.plan["methods"])
    gates = GATES[gate]
    assert a.plan["model"]["output_kind"] == ("logits" if gates.get("head") else "embedding")
    if mode == "graph":  # the control flow is kept in the program, not unrolled
        assert (stats["branches"] > 0) == bool(gates.get("exits") or gates.get("skips"))
        assert (stats["gathers"] > 0) == bool(gates.get("acm") or gates.get("moe"))
    else:  # the driver decides: the methods are plain, a segment between gates and the learners of each ACM
        assert stats["branches"] == stats["gathers"] == 0
        segments = a.plan["routed"]["segments"]
        assert {s["then"]["kind"] for s in segments} >= {"end"} | ({"exit"} if gates.get("exits") else set()) | (
            {"skip"} if gates.get("skips") else set()) | ({"acm"} if gates.get("acm") else set()) | (
            {"moe"} if gates.get("moe") else set())
        assert set(a.plan["methods"]) == {s["method"] for s in segments} | {
            s["then"].get("learners") or s["then"].get("experts") for s in segments if s["then"]["kind"] in ("acm", "moe")}
    if runtime in ("executorch", "litert"):  # XNNPACK takes what it can: in the routed mode, a part of every method
        assert stats["delegates"] >= (len(a.plan["methods"]) if mode == "routed" else 1)


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if not takes(r, "graph")])
def test_a_mode_the_runtime_cannot_take_is_refused_before_any_work(runtime, tmp_path):
    model, batch = adaptive(("bert", "bert"), exits=True)
    with pytest.raises(EdgeError, match=f"{runtime} takes the routed mode only, not graph"):
        export.to_runtime(model, runtime, tmp_path / "a", batch, progress=False, mode="graph")
    assert not (tmp_path / "a").exists()


def test_bad_artifacts_and_inputs_give_clear_errors(tmp_path):
    model, batch = adaptive(("bert", "bert"), exits=True)
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False)
    run_ = a.runner()
    args = [batch["input_ids"][:1].numpy(), batch["attention_mask"][:1].numpy(), np.ones(1, np.float32)]
    assert len(run_(args)) == 3
    with pytest.raises(EdgeError, match="input_ids must be int64"):
        run_([args[0].astype(np.int32), *args[1:]])
    with pytest.raises(EdgeError, match="must have shape"):
        run_([args[0][None], *args[1:]])
    with pytest.raises(EdgeError, match="takes 3 inputs"):
        run_(args[:2])
    # the output directory exists: refused, nothing touched
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    with pytest.raises(EdgeError, match="already exists"):
        export.to_onnx(model, tmp_path / "a", batch, progress=False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before
    with pytest.raises(EdgeError, match="has 1 tokens; this model takes 2..64"):
        export.to_onnx(model, tmp_path / "b", {k: v[:, :1] for k, v in batch.items()}, progress=False)
    assert not (tmp_path / "b").exists()
    # a truncated program, a plan for other files, a corrupt plan
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "a", bad)
    program = a.programs[0]
    data = program.read_bytes()
    (bad / program.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeError, match="does not match its plan"):
        export.load_artifact(bad)
    (bad / program.name).write_bytes(data)
    export.load_artifact(bad)
    plan = json.loads((bad / "plan.json").read_text())
    plan["files"]["model.onnx"] = "0" * 64
    (bad / "plan.json").write_text(json.dumps(plan))  # edited by hand: plan.json's own digest refuses it
    with pytest.raises(EdgeError, match="does not match its own digest"):
        export.verify(bad)
    write_plan(bad, plan)  # a plan re-stamped for other files: the files' digests refuse it
    with pytest.raises(EdgeError, match="does not match its plan"):
        export.verify(bad)
    (bad / "plan.json").write_text("{not json")
    with pytest.raises(EdgeError, match="not a valid edge plan"):
        export.load_artifact(bad)
    with pytest.raises(EdgeError, match="not an edge artifact"):
        export.load_artifact(tmp_path)


def test_a_wrong_program_fails_verification(tmp_path):
    """verify can fail: a program exported from other weights differs from this model."""
    model, batch = adaptive(("bert", "bert"), exits=True, acm=True)
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False)
    other = copy.deepcopy(model)
    with torch.no_grad():  # the first layer's attention runs on every branch
        other.encoder.layer[0].attention.output.dense.weight.add_(0.1 * torch.randn(32, 32))  # (not a constant: LayerNorm follows)
    with pytest.raises(EdgeError, match="differs from eager"):
        export.verify(a, other)


def test_executorch_lowering_keeps_what_xnnpack_cannot_take_loadable(tmp_path):
    """The ExecuTorch lowering skips a decomposition pass only when XNNPACK takes every op it asks to
    keep whole: a linear on a weight that is an input (XNNPACK wants a constant) is decomposed as
    before, so the program loads and runs (skipping it there leaves an op no kernel runs)."""
    from device.executorch import load
    from export.executorch import lower

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fixed = torch.nn.Linear(4, 5)

        def forward(self, x, w):
            return torch.nn.functional.linear(x, w) + self.fixed(x)

    model = Both()
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    ep = torch.export.export(model, (x, w))
    run = load(tmp_path, lower({"forward": ep}, tmp_path, False))["forward"]
    with torch.no_grad():
        assert np.abs(run([x.numpy(), w.numpy()])[0] - model(x, w).numpy()).max() < 1e-5


def test_executorch_dynamic_int8_runs_int8_gemms_in_xnnpack(tmp_path):
    """export.executorch.dynamic_int8 (bench/acm_layer.py --int8): the Linears of a module, with a
    dynamic row count, become XNNPACK's int8 GEMMs: every op in the delegate, a quarter of the weight
    bytes in the program, outputs near fp32's (int8 error, not fp32's), at every row count."""
    from device.executorch import load, stats
    from export.executorch import FILE, dynamic_int8, lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    rows = ({0: torch.export.Dim("rows", min=1, max=32)},)
    sizes = {}
    for name, ep in (("fp32", torch.export.export(model, (torch.randn(8, 64),), dynamic_shapes=rows)),
                     ("int8", dynamic_int8(model, (torch.randn(8, 64),), rows))):
        (tmp_path / name).mkdir()
        files = lower({"forward": ep}, tmp_path / name, False)
        sizes[name] = (tmp_path / name / FILE).stat().st_size
        assert stats(tmp_path / name, files)["kernels"] == 0  # nothing left outside XNNPACK
        run = load(tmp_path / name, files, threads=1)["forward"]
        for n in (1, 5, 32):
            x = torch.randn(n, 64)
            with torch.no_grad():
                want = model(x).numpy()
            err = np.abs(run([x.numpy()])[0] - want).max() / np.abs(want).max()
            assert (err < 1e-5) if name == "fp32" else (1e-5 < err < 0.05), (name, n, err)
    assert sizes["int8"] < 0.4 * sizes["fp32"]


def test_executorch_takes_the_attention_head_splits_into_xnnpack(tmp_path, monkeypatch):
    """A view to a shape with one dynamic size (the tokens) is written with -1, which XNNPACK takes:
    every head split and merge of attention (4 a layer) leaves the portable kernels; same outputs."""
    import export.executorch as et

    model, batch = edge.ARCHS.get("bert").tiny("bert")
    with_pass = export.to_executorch(model, tmp_path / "a", batch, progress=False)
    monkeypatch.setattr(et, "one_inferred_size", lambda gm: None)  # (a pass returning None changes nothing)
    without = export.to_executorch(model, tmp_path / "b", batch, progress=False)
    from device.executorch import stats

    kernels = [stats(a.path, a.plan["methods"])["kernels"] for a in (with_pass, without)]
    assert kernels[1] - kernels[0] >= 4 * len(edge.arch_for(model).layers(model)), kernels


def test_executorch_runs_the_cond_branches_and_the_learners_on_xnnpack(tmp_path, monkeypatch):
    """In the in-graph ExecuTorch program the work inside the cond branches (an exit's rest of the
    network, a skipped attention) and the ACM learners on their gathered tokens (a data-dependent
    size, never 0: one spare row each) are XNNPACK's: no matrix product, softmax or LayerNorm part
    is left to the portable kernels; without the partitioner's leave to take such sizes the learners'
    are."""
    import contextlib

    import export.executorch as et
    from executorch.exir._serialize._program import deserialize_pte_binary

    def portable(model, batch, name):
        a = export.to_executorch(model, tmp_path / name, batch, progress=False, mode="graph")
        plan = deserialize_pte_binary((a.path / "model.pte").read_bytes()).program.execution_plan[0]
        calls = [i.instr_args for c in plan.chains for i in c.instructions]
        return {plan.operators[c.op_index].name.removeprefix("aten::") for c in calls if type(c).__name__ == "KernelCall"}

    heavy = {"linear", "mm", "addmm", "bmm", "_softmax", "mean", "rsqrt", "gelu", "index_put"}
    model, batch = adaptive(("bert", "bert"), exits=True, skips="attention", acm=True)
    assert not portable(model, batch, "all") & heavy
    monkeypatch.setattr(et, "sized_rows_allowed", contextlib.nullcontext)
    assert portable(model, batch, "refused") & heavy == {"linear", "gelu", "mm"}  # (the learners: up, act, down)


def test_onnx_branches_hold_the_weights_only_they_read(tmp_path, monkeypatch):
    """In the in-graph ONNX program a weight that only one If branch reads is an initializer of that
    branch (ONNX Runtime pre-packs a MatMul's weight only from its own graph), not of an enclosing
    graph; without export.onnx.weights_into_branches the layers' weights after the exit are not."""
    import onnx

    import export.onnx as ox

    def misplaced(path: Path) -> list[str]:
        """Initializers of a graph that no node of that graph reads, and only one of its branches does."""
        def branches(g):
            return [a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]

        def reads(g):
            return {i for n in g.node for i in n.input} | {i for b in branches(g) for i in reads(b)}

        def check(g):
            own = {i for n in g.node for i in n.input}
            bad = [w.name for w in g.initializer if w.name not in own and sum(w.name in reads(b) for b in branches(g)) == 1]
            return bad + [w for b in branches(g) for w in check(b)]

        return check(onnx.load(str(path)).graph)

    model, batch = adaptive(("bert", "bert"), exits=True)
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False, mode="graph")
    assert misplaced(a.path / "model.onnx") == []
    monkeypatch.setattr(ox, "weights_into_branches", lambda graph: None)
    b = export.to_onnx(model, tmp_path / "b", batch, progress=False, mode="graph")
    assert len(misplaced(b.path / "model.onnx")) >= 6  # (the tiny model's second layer: its Linears' weights)


def test_onnx_sessions_leave_out_the_slow_fusions(tmp_path, monkeypatch):
    """ONNX Runtime's SkipLayerNormalization and BiasGelu ran slower than what they fuse
    (bench/ort_fusions.py): edge's sessions run LayerNorm and Gelu instead; ORT's default would not."""
    import device.onnx as device_onnx

    def ran(art) -> set[str]:
        run, ops = art.profiled_runner(threads=1)
        run(art.inputs())
        return {o["op"] for o in ops.read()["ops"]}

    model, batch = adaptive(("bert", "bert"))
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False)
    ops = ran(a)
    assert {"LayerNormalization", "Gelu"} <= ops and not ops & {"SkipLayerNormalization", "BiasGelu"}
    monkeypatch.setattr(device_onnx, "SLOW_FUSIONS", ())
    assert {"SkipLayerNormalization", "BiasGelu"} <= ran(a)


def test_onnx_sessions_run_without_the_memory_pattern(tmp_path, monkeypatch):
    """ORT's memory pattern made gated graphs slower (bench/ort_fusions.py): edge's CPU sessions turn it off."""
    import device.onnx as device_onnx

    model, batch = adaptive(("bert", "bert"), exits=True)
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False)
    pattern = lambda: [s.get_session_options().enable_mem_pattern  # noqa: E731
                       for s in device_onnx._sessions(a.path, a.plan["methods"], 1).values()]
    assert pattern() == [False]
    monkeypatch.setattr(device_onnx, "MEMORY_PATTERN", True)
    assert pattern() == [True]


def test_budget_levels_go_into_the_plan(tmp_path):
    """Budget levels are the knobs edge.set_budget_ picks per FLOP budget; the plan records them and a
    level without the model's knobs is refused."""
    model, batch = adaptive(("bert", "bert"), exits=True, acm=True)
    original = edge.ARCHS.get("bert").tiny("bert")[0]
    levels = export.budget_levels(model, original, [batch], (1.0, 0.7))
    assert [lv["name"] for lv in levels] == ["budget 1", "budget 0.7"]
    assert all(lv["flops_frac"] <= lv["budget"] for lv in levels)
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False, levels=levels)
    assert a.plan["budget_levels"] == json.loads(json.dumps(levels))
    with pytest.raises(EdgeError, match="must have a name and the knobs"):
        export.to_onnx(model, tmp_path / "b", batch, progress=False, levels=[{"name": "x", "exit_thresholds": [0.5]}])
    with pytest.raises(EdgeError, match=r"budget level must be in \(0, 1\]"):
        export.budget_levels(model, original, [batch], (1.5,))
    assert not (tmp_path / "b").exists()


def test_a_near_tie_is_reported_and_checked_along_the_artifacts_branch(tmp_path):
    """A gate decision within NEAR_TIE of its threshold may go either way between two correct fp32
    programs: verify reports it and compares the output along the branch the artifact took
    (recomputed in eager); the same flip at a decision far from its threshold is a mismatch."""
    from export.checks import NEAR_TIE, margins

    _, model, batch, acms = tiny_acm_model("bert", "bert")
    last = acms[0].gate[-1]  # learners 1 and 2 score exactly alike on every token, above the rest:
    with torch.no_grad():    # at gate bias 0 each token ties between k = 1 and k = 2
        last.weight[1:3] = 0.0
        last.bias[:] = 5.0
        last.bias[1:3] = -10.0
    a = export.to_onnx(model, tmp_path / "a", batch, progress=False)
    own = next(c for c in a.plan["checks"] if c["case"] == "own")
    assert own["margin"] == 0.0 and a.plan["near_tie"] == NEAR_TIE
    # the non-forcing gate-bias cases were moved off the tie: they test branches, not rounding
    assert not any(c["case"] == "gate bias +0" for c in a.plan["checks"])
    assert all(c["margin"] >= 10 * NEAR_TIE for c in a.plan["checks"] if c["case"].startswith("gate bias"))
    graph, real, n = GraphModel(model), a.runner(), len(a.plan["inputs"])

    def flipping(at_tie: bool):
        """The real runtime, except that token 0 of the first ACM takes k = 2 where it took k = 1 (at
        gate bias 0: the other side of the tie; elsewhere: a wrong branch), output recomputed so."""
        def run(values):
            got = real(values)
            tie = float(values[-1][0]) == 0.0
            if tie != at_tie or got[3][0, 0] != 1:
                return got
            ks = got[3].copy()
            ks[0, 0] = 2
            follow = {"exit_layer": int(got[1][0]), "skipped": [bool(v) for v in got[2]], "ks": ks}
            out, _ = margins(graph, [torch.from_numpy(v) for v in values[:n]],
                             [torch.from_numpy(v) for v in values[n:]], follow)
            return [o.numpy() for o in out]
        return run

    a.runner = lambda *args, **kw: flipping(at_tie=True)
    report = export.verify(a, eager=graph)
    assert report["branch_mismatches"] == [] and report["max_abs_diff"] <= 1e-4
    assert {t["case"] for t in report["near_threshold"]} == {"own", "full"}
    assert all(t["decisions"] == ["acm 1"] and t["margin"] == 0.0 for t in report["near_threshold"])
    a.runner = lambda *args, **kw: flipping(at_tie=False)
    with pytest.raises(EdgeError, match="branch mismatches: \\['gate bias"):
        export.verify(a, eager=graph)
    # without an eager model at hand, the bundled margin still tells a near-tie (output not compared)
    a.runner = lambda *args, **kw: flipping(at_tie=True)
    report = export.verify(a)
    assert {t["case"] for t in report["near_threshold"]} == {"own", "full"}
