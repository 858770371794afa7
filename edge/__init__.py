"""edge: make pretrained transformers adaptive (ACM width, later exits and skips) for edge devices.

    import edge
    model, tok = edge.load_pretrained()                      # all-MiniLM-L6-v2, offline
    texts = edge.austen_passages().split("train").texts
    acm = edge.acmize(model, edge.AcmConfig(budget=0.5), edge.batches(tok, texts))
    edge.save(acm, "out/minilm-acm", tokenizer=tok)
"""
__version__ = "0.1.0"

from edge.acm import ACM, AcmConfig, acm_modules
from edge.arch import ARCHS, arch_for
from edge.convert import DistillConfig, acmize, calibrate_budget_, install_acms, measure_budget, retarget
from edge.depth import ExitConfig, SkipConfig, add_exits, add_skips, run, set_budget_, sweep
from edge.data import austen_passages, batches, fetch_austen, text_file_passages
from edge.errors import EdgeError
from edge.head import HeadConfig, add_head
from edge.io import load, save
from edge.pretrained import load_pretrained

__all__ = ["ACM", "AcmConfig", "ARCHS", "DistillConfig", "EdgeError", "ExitConfig", "HeadConfig", "add_head", "SkipConfig", "add_exits", "add_skips", "run", "set_budget_", "sweep", "acm_modules", "acmize", "arch_for",
           "austen_passages", "batches", "calibrate_budget_", "fetch_austen", "install_acms", "load",
           "load_pretrained", "measure_budget", "retarget", "save", "text_file_passages"]
