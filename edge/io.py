"""Save and load ACMized models: safetensors weights + JSON configs. Loading never unpickles."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn

from edge.acm import AcmConfig
from edge.errors import EdgeError, check_interrupt

FORMAT = "edge-acm"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIONAL_MODULES = ("pooler",)  # submodules a model may be saved without (a BERT or ViT made without its pooler)
META = "edge.json"


def writable_parent(path: Path, what: str) -> None:
    """Make `path`'s parent directory, or one clear error (a parent that is a file, no permission)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EdgeError(f"cannot write {what} {path}: a part of {path.parent} is a file, not a directory") from None
    except OSError as e:
        raise EdgeError(f"cannot write {what} {path}: {e.strerror or e} ({path.parent})") from None
    if not path.parent.is_dir():
        raise EdgeError(f"cannot write {what} {path}: {path.parent} is not a directory")


def check_output(path: str | Path, overwrite: bool, kind: str = "directory") -> Path:
    """`path` if an output of `kind` ("directory" or "file") may be written there: nothing there, or
    one of that kind with overwrite (a file where a directory goes, a link, or the reverse, is
    refused, never removed), and no file where a parent directory must be. Called before minutes of
    work, and again by atomic_dir before the rename."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_symlink() or (not path.is_dir() if kind == "directory" else path.is_dir()):
            raise EdgeError(f"{path} exists and is not a {kind}; edge writes a {kind} there only where nothing or "
                            f"an earlier output is: remove it or choose another name")
        if not overwrite:
            raise EdgeError(f"{path} already exists; choose another output {kind} or pass --overwrite")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise EdgeError(f"cannot write {path}: {parent} is a file, not a directory")
            break
    return path


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False):
    """Yield a temporary directory beside `path`; on success it is renamed to `path`, on failure
    removed, so a reader never sees a half-written output directory. An existing `path` is replaced
    only with overwrite=True, and only if it is a directory (a file there is refused, never removed).
    Ctrl-C at any point (even one a library swallowed) leaves nothing written."""
    path = check_output(path, overwrite)
    writable_parent(path, "the output directory")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise EdgeError(f"cannot write the output directory {path}: {e.strerror or e}") from None
    try:
        yield tmp
        usual_modes_(tmp)  # mkdtemp/mkstemp make 0700/0600; a finished output gets the usual modes
        check_interrupt()
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)  # (the new output is in place whatever happens here)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def usual_modes_(path: Path) -> None:
    """chmod `path` (and what is under it) to 0777/0666 minus the umask, as open() would have made it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_atomic(path: str | Path, write) -> None:
    """Make `path` by write(tmp) on a temporary name beside it, then a rename: never half-written."""
    path = Path(path)
    if path.is_dir():
        raise EdgeError(f"cannot write the file {path}: a directory of that name exists")
    writable_parent(path, "the file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise EdgeError(f"cannot write the file {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        usual_modes_(Path(tmp))
        check_interrupt()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


# what an adaptive model may carry: edge.json key -> model attribute holding its config
_PARTS = {"acm": "acm_config", "head": "head_config", "exits": "exit_config", "skips": "skip_config"}


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

    import edge

    parts = {key: getattr(model, attr).to_dict() for key, attr in _PARTS.items() if hasattr(model, attr)}
    if not parts:
        raise EdgeError("this model has nothing of edge's to save; run edge.acmize, add_head, add_exits or add_skips first")
    cls = type(model)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "edge_version": edge.__version__,
            "model_module": cls.__module__, "model_class": cls.__name__, **parts, **(extra or {}),
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


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise EdgeError(f"{path / META} is not an {FORMAT} v{FORMAT_VERSION} file")
    return meta


def load(path: str | Path) -> nn.Module:
    """Load a model written by `save`: rebuild the architecture, install ACMs, load the weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from edge.convert import install_acms

    path = Path(path)
    meta = read_meta(path)
    if not str(meta.get("model_module", "")).startswith("transformers."):
        raise EdgeError(f"{path / META}: model_module must be a transformers module")
    try:
        cls = getattr(importlib.import_module(meta["model_module"]), meta["model_class"])
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ImportError, AttributeError, KeyError, OSError, ValueError) as e:
        raise EdgeError(f"cannot rebuild the model described in {path}: {e}") from None
    from edge.depth import ExitConfig, SkipConfig, install_exits, install_skips
    from edge.head import HeadConfig, install_head

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
    if "acm" in meta:
        install_acms(model, AcmConfig.from_dict(meta["acm"]))
    if "head" in meta:  # before the exits: a classifier's exits have its number of classes
        install_head(model, HeadConfig.from_dict(meta["head"]))
    if "exits" in meta:
        install_exits(model, ExitConfig.from_dict(meta["exits"]))
    if "skips" in meta:
        install_skips(model, SkipConfig.from_dict(meta["skips"]))
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
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EdgeError(f"{path / WEIGHTS} does not match its config: {' '.join(str(e).split())[:300]}") from None
    return model.eval().requires_grad_(False)
