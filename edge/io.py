"""Save and load ACMized models: safetensors weights + JSON configs. Loading never unpickles."""
from __future__ import annotations

import importlib
import json
from importlib.metadata import version
from pathlib import Path

import torch.nn as nn

from edge.errors import EdgeError
from edge.files import atomic_dir, sha256, write_json_atomic
from edge.parts import TRANSFORMS, install_order, parts
import edge.transforms  # noqa: F401  (fills TRANSFORMS: every transform registers itself there)

FORMAT = "edge-acm"
# 2: the parts' weights under edge_parts.NAME (1: edge_exits, edge_routers, edge_head); 3: an ACM config has
# exact_top (before 3 there was none: k = N ran every learner)
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
V1_PREFIXES = {"edge_exits.": "edge_parts.exits.", "edge_routers.": "edge_parts.skips.", "edge_head.": "edge_parts.head."}
WEIGHTS = "model.safetensors"
OPTIONAL_MODULES = ("pooler",)  # submodules a model may be saved without (a BERT or ViT made without its pooler)
META = "edge.json"


def save(model: nn.Module, path: str | Path, tokenizer=None, extra: dict | None = None,
         overwrite: bool = False) -> Path:
    """Write an ACMized model to directory `path` (atomically).

    >>> import edge, tempfile
    >>> m, _ = edge.ARCHS.get("bert").tiny("bert")
    >>> _ = edge.install_acms(m, edge.AcmConfig(learners=2))
    >>> d = edge.save(m, tempfile.mkdtemp() + "/acm")
    >>> type(edge.load(d)).__name__
    'BertModel'
    """
    from safetensors.torch import save_file

    own = parts(model)
    configs = {name: own.config(name).to_dict() for name in own.names()}  # (edge.json: one key per transform)
    if not configs:
        raise EdgeError("this model has nothing of edge's to save; run edge.acmize, add_head, add_exits or add_skips first")
    cls = type(model)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "edge_version": version("edge"),
            "model_module": cls.__module__, "model_class": cls.__name__, **configs, **(extra or {}),
            "absent_modules": _absent_modules(model),
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(path, overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        meta["weights_sha256"] = sha256(tmp / WEIGHTS)  # (load refuses weights changed or damaged since)
        model.config.to_json_file(str(tmp / "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / META, meta)
    return Path(path)


def _absent_modules(model: nn.Module) -> list[str]:
    """Attributes that are None on `model`: `load` drops the submodules among them from the fresh
    model it builds (e.g. a BERT made without its pooler), so that the weights match."""
    return sorted(n for n, v in vars(model).items() if v is None and not n.startswith("_"))


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise EdgeError(f"{path} is not a directory; pass a directory written by `edge acmize`")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise EdgeError(f"{path} has no {META}; it was not written by `edge acmize`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"{path / META} is corrupt ({str(e).splitlines()[0][:120]}); re-run `edge acmize`") from None
    except OSError as e:
        raise EdgeError(f"cannot read {path / META}: {e.strerror or e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
        versions = ", ".join(map(str, READABLE_VERSIONS[:-1])) + f" or {READABLE_VERSIONS[-1]}"
        raise EdgeError(f"{path / META} is not an {FORMAT} file of version {versions}")
    return meta


def load(path: str | Path) -> nn.Module:
    """Load a model written by `save`: rebuild the architecture, install ACMs, load the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    meta = read_meta(path)
    if not str(meta.get("model_module", "")).startswith("transformers."):
        raise EdgeError(f"{path / META}: model_module must be a transformers module")
    try:
        cls = getattr(importlib.import_module(meta["model_module"]), meta["model_class"])
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ImportError, AttributeError, KeyError, OSError, ValueError) as e:
        raise EdgeError(f"cannot rebuild the model described in {path}: {e}") from None
    if meta.get("attn_implementation"):  # not kept in config.json; eager and sdpa differ in the last bits
        hf_config._attn_implementation = meta["attn_implementation"]
    from transformers import PreTrainedModel

    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise EdgeError(f"{path / META}: model_class {meta['model_class']!r} is not a transformers model class")
    try:
        model = cls(hf_config)
    except Exception as e:  # (a class of another architecture than config.json's)
        raise EdgeError(f"cannot rebuild the model described in {path}: {type(e).__name__}: "
                        f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
    absent = meta.get("absent_modules", [])
    if not (isinstance(absent, list) and all(isinstance(n, str) for n in absent)):
        raise EdgeError(f"{path / META}: absent_modules must be a list of names")
    for name in absent:
        if name in model._modules and model._modules[name] is not None:
            if name not in OPTIONAL_MODULES:  # (the model cannot run without the others)
                raise EdgeError(f"{path / META}: absent_modules may name only {', '.join(OPTIONAL_MODULES)}, "
                                f"not {name[:40]!r}")
            setattr(model, name, None)
    if meta["format_version"] < 3 and isinstance(meta.get("acm"), dict):
        meta["acm"] = {"exact_top": False, **meta["acm"]}  # (what an ACM was before the option)
    for name in install_order([n for n in TRANSFORMS.names() if n in meta]):  # (e.g. a head before its exits)
        t = TRANSFORMS.get(name)
        if not isinstance(meta[name], dict):
            raise EdgeError(f"{path / META}: {name} must be a config (a JSON object)")
        t.install(model, t.config.from_dict(meta[name]))
    digest = meta.get("weights_sha256")  # (models saved before edge recorded it load unchecked)
    if digest is not None and (path / WEIGHTS).is_file() and sha256(path / WEIGHTS) != digest:
        raise EdgeError(f"{path / WEIGHTS} does not match the digest in {META}: it was changed or damaged since "
                        "it was saved; save or convert the model again")
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise EdgeError(f"{path / WEIGHTS} is missing; re-run `edge acmize`") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgeError(f"{path / WEIGHTS} is corrupt ({e}); re-run `edge acmize`") from None
    if meta["format_version"] == 1:
        state = {_v1_key(k): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EdgeError(f"{path / WEIGHTS} does not match its config: {' '.join(str(e).split())[:300]}") from None
    return model.eval().requires_grad_(False)


def _v1_key(key: str) -> str:
    for old, new in V1_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key
