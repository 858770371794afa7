"""int8 quantization (edge.quant): QLinear against the arithmetic it stands for, the transform on every
registered architecture with every other transform, save/load, the refusals, and the exports of a
quantized model: parity with the same quantization in eager on every branch, XNNPACK's quantized
GEMMs (a smaller program, no matrix product left to the portable kernels), the native runner."""
import random

import numpy as np
import pytest
import torch

import edge
import export
from edge.errors import EdgeError
from edge.head import install_head
from edge.parts import parts
from edge.quant import QEmbedding, QLinear, QuantConfig
from tests.conftest import CASES
from tests.test_export import GATES, adaptive, native_records

SCHEMES = ("8da8w", "8da4w")


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """What a dynamically quantized GEMM computes, written out from its definition (no quantized op):
    x per row: scale (max(x, 0) - min(x, 0)) / 255, zero point round(-128 - min / scale); w symmetric per
    output channel (or group): scale max|w| / ((qmax - qmin) / 2)."""
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=torch.finfo(torch.float32).eps)
    z = torch.clamp(torch.round(-128 - lo / s), -128, 127)
    xd = (torch.clamp(torch.round(x / s) + z, -128, 127) - z) * s
    qmax, qmin = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    blocks = w.reshape(w.shape[0], -1, group or w.shape[1])
    ws = blocks.abs().amax(-1, keepdim=True) / ((qmax - qmin) / 2)
    wd = (torch.clamp(torch.round(blocks / ws), qmin, qmax) * ws).reshape(w.shape)
    return xd @ wd.t() + b


@pytest.mark.parametrize("seed", range(6))
def test_qlinear_computes_the_quantized_gemm(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    group = rng.choice([0, 8, 16, 32])
    d_in = (group or 8) * rng.randint(1, 6)
    d_out, rows = rng.randint(1, 70), rng.randint(1, 40)
    lin = torch.nn.Linear(d_in, d_out)
    x = torch.randn(rows, d_in) * rng.choice([0.01, 1.0, 30.0])
    for bits in (8, 4):
        q = QLinear.of(lin, bits, group)
        assert q.qweight.dtype == torch.int8 and int(q.qweight.min()) >= q.qmin and int(q.qweight.max()) <= q.qmax
        with torch.no_grad():
            got, want, fp32 = q(x), _reference(x, lin.weight, lin.bias, bits, group), lin(x)
        scale = float(fp32.abs().max())
        assert float((got - want).abs().max()) <= 1e-5 * max(scale, 1.0), (bits, group)
        error = float((got - fp32).abs().max()) / scale  # quantization error: there, and bounded
        assert 0 < error < (0.05 if bits == 8 else 0.5), (bits, group, error)
        x3 = x[None].expand(2, -1, -1)  # (batch, tokens, d): per token over any leading dims
        assert torch.allclose(q(x3)[1], got, atol=1e-6)


def _with_everything(case):
    """A tiny model of `case` with ACMs, exits and attention skips (and a head on an embedding model)."""
    model, batch = adaptive(case, acm=True, exits=True, skips="attention", head=edge.arch_for(adaptive(case)[0])
                            .output_kind(adaptive(case)[0]) == "embedding")
    return model, batch


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_quantize_every_architecture_with_every_transform(case, scheme, tmp_path):
    model, batch = _with_everything(case)
    q = edge.quantize(model, QuantConfig(scheme, group_size=16))
    linears = [m for m in q.modules() if isinstance(m, torch.nn.Linear)]
    qlinears = [m for m in q.modules() if isinstance(m, QLinear)]
    acms = edge.acm_modules(q)
    # the decisions stay fp32: every Linear left is in an ACM gate, an exit head or a router
    decisions = {id(m) for a in acms for m in a.gate.modules()} | {
        id(m) for name in ("exits", "skips") for m in parts(q).module(name).modules()}
    assert linears and all(id(m) in decisions for m in linears)
    assert all(a.learners is not None and a.w1 is None for a in acms)  # the learners quantized, no fp32 copy kept
    if scheme == "8da4w":
        assert {m.bits for m in qlinears} == {4} or all(m.in_features % 16 for m in qlinears if m.bits == 8)
    assert not any(isinstance(m, QLinear) for m in model.modules())  # the original untouched
    arch = edge.arch_for(q)
    with torch.no_grad():
        a, b = arch.output(model, batch), arch.output(q, batch)
    assert a.shape == b.shape and 0 < float((a - b).abs().max()) < 0.5 * float(a.abs().max()) + 1e-3
    out, trace = edge.run(q, batch)  # the adaptive forward and its FLOPs: int8 MACs count as fp32's
    assert torch.isfinite(out).all() and float(trace.flops.min()) > 0
    d = edge.save(q, tmp_path / "q")
    r = edge.load(d)
    assert parts(r).config("quant") == parts(q).config("quant")
    with torch.no_grad():
        assert torch.equal(arch.output(r, batch), b)  # the integers and scales come back bit for bit
    assert {k: v.dtype for k, v in r.state_dict().items() if k.endswith("qweight")} and \
        all(v.dtype == torch.int8 for k, v in r.state_dict().items() if k.endswith("qweight"))


def test_cover_quantizes_the_decisions_when_asked():
    model, batch = _with_everything(("bert", "bert"))
    q = edge.quantize(model, QuantConfig(cover=("backbone", "learners", "head", "gates", "exits", "skips")))
    assert not [m for m in q.modules() if isinstance(m, torch.nn.Linear)]
    only = edge.quantize(model, QuantConfig(cover=("head",)))
    assert isinstance(parts(only).module("head").linear, QLinear)
    assert sum(isinstance(m, (QLinear, QEmbedding)) for m in only.modules()) == 1
    tables = edge.quantize(model, QuantConfig(cover=("embeddings",)))
    assert not any(isinstance(m, QLinear) for m in tables.modules())
    assert not any(isinstance(m, torch.nn.Embedding) for m in tables.modules())


def test_group_size_falls_back_to_per_channel_where_it_does_not_divide():
    model, _ = edge.ARCHS.get("bert").tiny("bert")
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    group = next(g for g in range(2, 200) if any(w % g == 0 for w in widths) and any(w % g for w in widths))
    q = edge.quantize(model, QuantConfig("8da4w", group_size=group))
    for m in q.modules():
        if isinstance(m, QLinear):
            assert (m.bits, m.group) == ((4, group) if m.in_features % group == 0 else (8, 0))


def test_bad_quantization_requests_are_one_line_each():
    model, batch = _with_everything(("bert", "bert"))
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    odd = next(g for g in range(3, 999, 2) if all(w % g for w in widths | {32, 64}))
    bad = [
        (lambda: QuantConfig("8da3w"), "QuantConfig.scheme"),
        (lambda: QuantConfig(group_size=1), "QuantConfig.group_size"),
        (lambda: QuantConfig(group_size=True), "QuantConfig.group_size"),
        (lambda: QuantConfig(cover=("attention",)), "QuantConfig.cover"),
        (lambda: QuantConfig(cover=()), "names nothing"),
        (lambda: edge.quantize(model, QuantConfig("8da4w", group_size=odd)), "divides none"),
        (lambda: edge.quantize(edge.quantize(model), QuantConfig()), "already quantized"),
        (lambda: edge.quantize(model, "8da8w"), "QuantConfig"),
    ]
    q = edge.quantize(model)
    bad += [
        (lambda: edge.acmize(q, edge.AcmConfig(learners=2), [batch], progress=False), "acmize"),
        (lambda: edge.add_exits(q, edge.ExitConfig(after=[1], steps=1), [batch], progress=False), "add_exits"),
        (lambda: edge.add_skips(q, edge.SkipConfig(samples=2), [batch], progress=False), "add_skips"),
        (lambda: edge.add_head(edge.quantize(edge.ARCHS.get("bert").tiny("bert")[0]), torch.nn.Linear(32, 2)), "add_head"),
        (lambda: install_head(edge.quantize(edge.ARCHS.get("bert").tiny("bert")[0]), edge.HeadConfig(3)), "comes last"),
    ]
    for make, needle in bad:
        with pytest.raises(EdgeError) as e:
            make()
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def _weight_bytes(a) -> int:
    """The bytes of the artifact's program files, or of the tensors in them for ONNX (a tiny model's ONNX
    file is mostly its nodes, and a quantized Linear is ~35 small nodes; MiniLM's size_ratio:
    bench/export_speed.py --quantize)."""
    if a.plan["runtime"] != "onnx":
        return sum((a.path / f).stat().st_size for f in set(a.plan["methods"].values()))
    import onnx

    total = 0
    for f in set(a.plan["methods"].values()):
        for g in _graphs(onnx.load(str(a.path / f)).graph):
            total += sum(len(i.raw_data) or i.ByteSize() for i in g.initializer)
            total += sum(len(t.t.raw_data) for n in g.node if n.op_type == "Constant" for t in n.attribute if t.t.dims)
    return total


QUANT_EXPORTS = [(r, g, m, s) for r in export.RUNTIMES.names() for g in ("acm", "moe", "exits", "skip-block", "head-exits")
                 for m in export.MODES for s in SCHEMES if s in export.precisions(r, m) and m in export.RUNTIMES.get(r).modes
                 and (s == "8da8w" or g == "acm")]


DECISION_WEIGHTS = ("gate", "router", "exits", "skips")  # the weights of an ACM gate, a MoE router, an exit head, a skip router


def _gemms_left_in_float(a) -> set[str]:
    """The matrix products of the artifact that are not its runtime's quantized GEMM."""
    if a.plan["runtime"] == "executorch":  # no matrix product and no (de)quantize op in the portable kernels
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary((a.path / "model.pte").read_bytes()).program
        names = {p.operators[i.instr_args.op_index].name for p in program.execution_plan for c in p.chains
                 for i in c.instructions if type(i.instr_args).__name__ == "KernelCall"}
        return {n for n in names if any(w in n for w in ("linear", "mm", "quantize", "choose_qparams"))}
    if a.plan["runtime"] == "litert":  # a FULLY_CONNECTED with float weights is a decision's
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

        from export.litert import _gemms

        gemms = [(name, weight.name.decode(), fb.TENSOR_CODE_TO_TYPE[weight.type])
                 for _, _, name, weight in _gemms(fb.read_model((a.path / "model.tflite").read_bytes()))
                 if name == "FULLY_CONNECTED" and weight is not None]
        found = {w for _, w, t in gemms if t != "INT8" and not any(d in w for d in DECISION_WEIGHTS)}
        return found if any(t == "INT8" for *_, t in gemms) else {"no int8 FULLY_CONNECTED at all"}
    import onnx  # ONNX: a MatMul or Gemm left is attention's (scores and values) or a decision's, on no other weight

    found, integer = set(), 0
    for f in set(a.plan["methods"].values()):
        model = onnx.load(str(a.path / f))
        weights = {i.name for i in model.graph.initializer}
        nodes = [n for g in _graphs(model.graph) for n in g.node]
        weights |= {i.name for g in _graphs(model.graph) for i in g.initializer}
        found |= {f"{f}:{w}" for n in nodes if n.op_type in ("MatMul", "Gemm") for w in weights & set(n.input)
                  if not any(d in w for d in DECISION_WEIGHTS)}  # (the decisions stay fp32)
        integer += sum(n.op_type == "MatMulInteger" for n in nodes)
    return found if integer else {"no MatMulInteger at all"}


def _graphs(g):
    yield g
    for n in g.node:
        for attr in n.attribute:
            if attr.g.node:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


@pytest.mark.parametrize("runtime,gate,mode,scheme", QUANT_EXPORTS, ids=[f"{r}-{g}-{m}-{s}" for r, g, m, s in QUANT_EXPORTS])
def test_a_quantized_model_exports_on_every_branch(runtime, gate, mode, scheme, tmp_path):
    model, batch = adaptive(("bert", "bert"), **GATES[gate])
    q = edge.quantize(model, QuantConfig(scheme, group_size=32))
    a = export.to_runtime(q, runtime, tmp_path / "q", batch, progress=False, mode=mode)
    assert a.plan["precision"] == scheme and a.plan["quantization"]["cover"] == list(QuantConfig().cover)
    report = export.verify(a, q)  # against the live quantized model, every branch
    assert report["max_abs_diff"] <= a.plan["tolerance"] and not report["branch_mismatches"]
    fp32 = export.to_runtime(model, runtime, tmp_path / "f", batch, progress=False, mode=mode)
    assert _weight_bytes(a) < _weight_bytes(fp32)
    assert not _gemms_left_in_float(a)
    if runtime == "executorch":
        checks = {c["case"] for c in a.plan["checks"]}
        records = native_records(a.path)  # the C++ runner runs it unchanged, on every branch
        branches = [r for r in records if r["kind"] == "branch"]
        assert {b["case"] for b in branches} == checks and all(b["outputs_match"] for b in branches), branches


REFUSED = [(r, m, s) for r in export.RUNTIMES.names() for m in export.RUNTIMES.get(r).modes for s in SCHEMES
           if s not in export.precisions(r, m)]


@pytest.mark.parametrize("runtime,mode,scheme", REFUSED, ids=[f"{r}-{m}-{s}" for r, m, s in REFUSED])
def test_a_lowering_without_the_precision_refuses_the_model_before_any_work(runtime, mode, scheme, tmp_path):
    model, batch = adaptive(("bert", "bert"), acm=True)
    with pytest.raises(EdgeError, match=f"not {scheme} ones"):
        export.to_runtime(edge.quantize(model, QuantConfig(scheme)), runtime, tmp_path / "q", batch, progress=False, mode=mode)
    assert not (tmp_path / "q").exists()


def test_quantized_eager_tracks_fp32_on_the_tiny_models():
    """Not a quality figure (bench/int8.py has MiniLM's): the quantized output stays near fp32's."""
    for case in CASES:
        model, batch = edge.ARCHS.get(case[0]).tiny(case[1])
        q = edge.quantize(model)
        arch = edge.arch_for(model)
        with torch.no_grad():
            a, b = arch.output(model, batch).flatten(1), arch.output(q, batch).flatten(1)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert float(cos.min()) > 0.98, (case, cos.tolist())
        assert np.isfinite(b.numpy()).all()


def test_export_quantize_from_the_shell(tmp_path):
    """`edge export --quantize`: the artifact says its precision and verifies; the bad requests are one line
    each and write nothing."""
    from tests.test_cli import assert_user_error, edge_cli, tiny_acm_with_tokenizer

    src = tiny_acm_with_tokenizer(tmp_path / "acm")
    r = edge_cli("export", src, "--to", "onnx", "-o", tmp_path / "q", "--tokens", "16", "--quantize", "8da8w", "--quiet")
    assert r.returncode == 0, r.stderr
    a = export.load_artifact(tmp_path / "q")
    assert a.plan["precision"] == "8da8w" and export.verify(a)["max_abs_diff"] <= a.plan["tolerance"]
    for argv, needle in [(["--group-size", "16"], "go with --quantize"),
                         (["--quantize", "8da4w"], "not 8da4w"),  # (ONNX takes 8da8w only)
                         (["--quantize", "8da4w", "--group-size", "7"], "divides none"),
                         (["--quantize", "8da8w", "--quantize-cover", "head"], "no Linear or Embedding in head")]:
        r = edge_cli("export", src, "--to", "onnx", "-o", tmp_path / "bad", "--tokens", "16", *argv)
        assert_user_error(r, needle)
        assert not (tmp_path / "bad").exists()


def test_a_preset_holds_a_quantized_artifact(tmp_path):
    """A preset chosen from a quantized artifact's measured levels: it names the int8 artifact (by its
    plan's hash), saves, loads, and sets the knobs at run time."""
    from profiler import presets
    from tests.conftest import levels_for
    from tests.test_export import ALL_GATES

    model, batch = adaptive(("bert", "bert"), **ALL_GATES, threshold=1.0)
    q = edge.quantize(model)
    a = export.to_runtime(q, "onnx", tmp_path / "q", batch, progress=False, levels=levels_for(q))
    inputs = [[np.random.default_rng(i).integers(3, 100, (1, 10)).astype(np.int64), np.ones((1, 10), np.int64)]
              for i in range(3)]
    preset, points = presets.choose(a, "local", 1e4, inputs, runs=2, progress=False)
    assert preset.level == "full" and {p["level"] for p in points} == {"full", "fast"}
    again = presets.load_preset(presets.save_preset(preset, tmp_path / "p.yaml"))
    assert again == preset
    out = a.runner()(list(a.inputs()) + presets.apply_preset(again, a))
    assert int(out[1][0]) == 2 and a.plan["precision"] == "8da8w"
