"""edge: make pretrained transformers adaptive (ACM width, later exits and skips) for edge devices.

    import edge
    model, tok = edge.load_pretrained()                      # all-MiniLM-L6-v2, offline
    texts = edge.austen_passages().split("train").texts
    acm = edge.acmize(model, edge.AcmConfig(budget=0.5), edge.batches(tok, texts))
    edge.save(acm, "out/minilm-acm", tokenizer=tok)
"""
__version__ = "0.1.0"

from edge.acm import ACM, INITS, AcmConfig, acm_modules
from edge.arch import ARCHS, arch_for
from edge.convert import PRECISIONS, DistillConfig, acmize, calibrate_budget_, install_acms, measure_budget, retarget
from edge.depth import SKIP_TARGETS, ExitConfig, SkipConfig, add_exits, add_skips, run, set_budget_, sweep
from edge.data import (austen_passages, batches, fetch_austen, fetch_fashion_mnist, labelled_passages, read_passages,
                       text_file_passages)
from edge.console import quiet_console, terminal
from edge.errors import EdgeError, interrupted
from edge.fit import evaluate_text, fit_acms, fit_budget_, fit_exits, fit_head, fit_skips
from edge.head import HeadConfig, add_head
from edge.io import check_output, load, save, write_json_atomic
from edge.pretrained import LoadedModel, load_model, load_original, load_pretrained, load_tokenizer

__all__ = ["ACM", "AcmConfig", "ARCHS", "DistillConfig", "EdgeError", "ExitConfig", "HeadConfig", "add_head", "SkipConfig", "add_exits", "add_skips", "run", "set_budget_", "sweep", "acm_modules", "acmize", "arch_for",
           "austen_passages", "batches", "calibrate_budget_", "fetch_austen", "install_acms", "load",
           "load_pretrained", "measure_budget", "retarget", "save", "text_file_passages",
           # the steps on text and model directories (edge.fit, edge.pretrained, edge.data), and the
           # registries' names, that the `edge` command (edge_cli) calls
           "INITS", "PRECISIONS", "SKIP_TARGETS", "LoadedModel", "check_output", "evaluate_text",
           "fetch_fashion_mnist", "fit_acms", "fit_budget_", "fit_exits", "fit_head", "fit_skips", "interrupted",
           "labelled_passages", "load_model", "load_original", "load_tokenizer", "quiet_console", "read_passages",
           "terminal", "write_json_atomic"]
