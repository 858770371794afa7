"""edge: make pretrained transformers adaptive (ACM width, early exits, skip routers, a task head) for
edge devices.

    import edge
    model, tok = edge.load_pretrained()                      # all-MiniLM-L6-v2, offline
    texts = edge.austen_passages().split("train").texts
    acm = edge.acmize(model, edge.AcmConfig(budget=0.5), edge.batches(tok, texts))
    edge.save(acm, "out/minilm-acm", tokenizer=tok)

The public names load on first use (PEP 562): `import edge.errors` or `edge.files` (what the torch-free
device side uses) imports neither torch nor transformers.
"""
from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "ACM": "edge.acm", "AcmConfig": "edge.acm", "acm_modules": "edge.acm",
    "ARCHS": "edge.arch", "arch_for": "edge.arch",
    "DistillConfig": "edge.convert", "acmize": "edge.convert", "calibrate_budget_": "edge.budget",
    "install_acms": "edge.acm", "measure_budget": "edge.budget", "retarget": "edge.convert",
    "ExitConfig": "edge.exits", "SkipConfig": "edge.skips", "add_exits": "edge.depth", "add_skips": "edge.depth",
    "run": "edge.forward", "set_budget_": "edge.budget", "sweep": "edge.budget",
    "austen_passages": "edge.data", "batches": "edge.data", "fetch_austen": "edge.data",
    "text_file_passages": "edge.data",
    "EdgeError": "edge.errors",
    "HeadConfig": "edge.head", "add_head": "edge.head",
    "load": "edge.io", "save": "edge.io",
    "load_pretrained": "edge.pretrained",
    "MoE": "edge.moe", "MoeConfig": "edge.moe", "moefy": "edge.moe_convert",
    "PruneConfig": "edge.pruning", "prune": "edge.pruning",
    "QLinear": "edge.quant", "QuantConfig": "edge.quant", "quantize": "edge.quant",
    "coalesce": "edge.multilevel", "decoalesce": "edge.multilevel", "interpolate_": "edge.multilevel",
    "VCycleConfig": "edge.vcycle",
    # the steps on text and model directories (edge.fit, edge.pretrained, edge.data), the registries' names
    # and the console helpers that the `edge` command (edge_cli) calls
    "INITS": "edge.acm", "PRECISIONS": "edge.convert", "SKIP_TARGETS": "edge.skips",
    "fetch_fashion_mnist": "edge.data", "labelled_passages": "edge.data", "read_passages": "edge.data",
    "quiet_console": "edge.console", "terminal": "edge.console", "interrupted": "edge.errors",
    "evaluate_text": "edge.fit", "fit_acms": "edge.fit", "fit_budget_": "edge.fit", "fit_exits": "edge.fit",
    "fit_head": "edge.fit", "fit_moe": "edge.fit", "fit_prune": "edge.fit", "fit_skips": "edge.fit",
    "check_output": "edge.files", "write_json_atomic": "edge.files",
    "LoadedModel": "edge.pretrained", "load_model": "edge.pretrained", "load_original": "edge.pretrained",
    "load_tokenizer": "edge.pretrained",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # (once: the next lookup is a plain attribute)
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"edge.{name}") is not None:
        return importlib.import_module(f"edge.{name}")  # a submodule (edge.pretrained, ...), on first use
    raise AttributeError(f"module 'edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
