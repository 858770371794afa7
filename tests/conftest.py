import os

import pytest
import torch

from edge.arch import ARCHS

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2` on 2 cores: one thread per worker, in it and in the
    os.environ["OMP_NUM_THREADS"] = "1"      # processes it starts (the CLI, the profiler's measuring side), instead
    torch.set_num_threads(1)                 # of two workers' thread pools of 2 each spinning against each other

# every registered (adapter, model_type): a new architecture is tested by being registered
CASES = [(name, mt) for name, arch in ARCHS.items() for mt in arch.model_types]


# `pytest -m "not slow"` is the inner loop (a few minutes on 2 cores); the README's command runs all.
# Slow: a whole file of subprocess or toolchain cases, a case that exports to ExecuTorch or LiteRT (15-70 s
# each), or one whose name says it runs the real model, the native runner, a board, a phone or the CLI's
# end-to-end paths. Everything else (eager models, ONNX, configs, plans, layers) stays in the inner loop.
SLOW_FILES = {"test_bad_input.py", "test_android_demo.py", "test_convert.py", "test_plan_schema.py"}
# the inner loop exports the BERT family's graph mode to ONNX only; the other runtimes, modes and families in full
SLOW_PARAMS = ("executorch", "litert", "routed", "roberta", "electra", "whisper", "vit")
SLOW_NAMES = ("executorch", "native", "ssh", "adb", "qemu", "aarch64", "real", "minilm", "demo", "whole_path",
              "other_mode", "without_torch", "replay", "full_setting", "chain", "probe_is_kept", "wrong_program",
              "bad_artifacts", "model_verbs", "bad_input", "corrupt_checkpoint", "ctrl_c", "unsupported_architecture",
              "cut_short", "only_they_read", "budget_levels_go_into", "to_runtime", "profiling.profile")


def _slow(item) -> bool:
    if item.path.name in SLOW_FILES:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(w in str(v) for v in params.values() for w in SLOW_PARAMS):
        return True
    return any(w in item.name.lower().replace("-", "_") for w in SLOW_NAMES)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def levels_for(model):
    """Two budget levels: 'full' (no exit, no skip, every learner) and 'fast' (exit after layer 1)."""
    from export.graph import GraphModel

    own = {k: v.tolist() for k, v in GraphModel(model).knobs().items()}
    full = {"exit_thresholds": [1.0], "skip_thresholds": [0.0, 0.0], "gate_bias": [b - 1e4 for b in own["gate_bias"]]}
    return [{"name": "full", **full}, {"name": "fast", **own, "exit_thresholds": [0.0]}]


_SHARED = {}  # runtime -> (model, batch, artifact), in this worker


@pytest.fixture(scope="session")
def bert_all_gates(tmp_path_factory, worker_id):
    """runtime -> (model, batch, artifact): the tiny bert with every gate (exits, attention skips, ACM)
    exported in the runtime's default mode with two budget levels ('full', 'fast'), ONCE per test
    session for all its xdist workers (under a file lock): test_export checks it on every branch,
    test_profiler measures it (an export is 15-40 s). Each worker builds the model itself, from the same
    seed; the export is checked against the live model wherever it is used (export.verify)."""
    import export
    from filelock import FileLock
    from tests.test_export import ALL_GATES, adaptive

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # (the parent: this session's, shared by its workers)

    def get(runtime: str):
        if runtime not in _SHARED:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model, batch = adaptive(("bert", "bert"), **ALL_GATES, threshold=1.0)
            out = root / f"bert-all-gates-{runtime}" / "a"
            out.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{out.parent}.lock"):
                if not out.is_dir():  # (written atomically: there whole or not at all)
                    export.to_runtime(model, runtime, out, batch, progress=False, levels=levels_for(model))
            _SHARED[runtime] = model, batch, export.load_artifact(out)
        return _SHARED[runtime]
    return get


@pytest.fixture(scope="session")
def shared_vectors(tmp_path_factory):
    """(vectors, directory): export/vectors.py's shared test vectors, written once a session, that every
    plan driver in another language replays against the Python driver (the Android demo's Java
    interpreter in test_android_demo, the native runner in test_plan_schema): every architecture with
    every gate type together, then each gate type alone; every branch, thresholds at equality included."""
    from export import vectors
    from tests.test_export import GATES, SUMMED_TOP, adaptive

    vs = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for case in CASES:
            model, batch = adaptive(case, exits=True, skips="attention", acm=True)
            vs += vectors.trace(model, batch, name=case[0])
        for gate, kinds in {**GATES, "acm without the exact top": dict(acm=SUMMED_TOP)}.items():
            model, batch = adaptive(("bert", "bert"), **kinds)
            vs += vectors.trace(model, batch, name=f"bert {gate}")
    directory = tmp_path_factory.mktemp("vectors")
    vectors.write(vs, directory)
    return vs, directory
