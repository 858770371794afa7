"""Real text, offline: Jane Austen's six novels from Debian's r-cran-janeaustenr, in fixed splits.

`fetch_austen` downloads the Debian package with `apt-get download`, unpacks it with `dpkg -x` and
reads R's lazy-load database with the `rdata` package; the novels are cached as JSON in the data
directory ($EDGE_DATA, default ~/.cache/edge). Passages are split into train / calib / probe / test
by blocks of consecutive passages; test is never seen by any training step.
"""
from __future__ import annotations

import gzip
import json
import random
import os
import shutil
import subprocess
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from edge.files import data_dir

PACKAGE = "r-cran-janeaustenr"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
SPLITS = {"train": range(0, 12), "calib": range(12, 14), "probe": range(14, 17), "test": range(17, 20)}
BLOCK = 8  # passages per block; blocks cycle through the splits by index mod 20


def austen_path() -> Path:
    return data_dir() / "austen.json"


def fetch_austen(force: bool = False) -> Path:
    """Make sure the novels are cached; returns the JSON path. Needs apt-get and dpkg (Debian)."""
    out = austen_path()
    if out.exists() and not force:
        return out
    from edge.files import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        root = _debian_unpack(PACKAGE, tmp, "or pass your own text with --text FILE")
        novels = _read_rdb(next(root.rglob("janeaustenr/data/Rdata.rdb")))
    write_json_atomic(out, novels)
    return out


def _debian_unpack(package: str, tmp: str, alternative: str) -> Path:
    """Download a Debian package with apt-get and unpack it (no installation) under tmp; returns the root."""
    _run(["apt-get", "download", package], tmp,
         f"could not download {package} with apt-get; run `apt-get update` and retry, {alternative}")
    deb = next(Path(tmp).glob(f"{package}_*.deb"))
    _run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], tmp, f"dpkg could not unpack {deb.name}")
    return Path(tmp) / "x"


# --- Fashion-MNIST (Debian's dataset-fashion-mnist) ------------------------------------------------
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_dir() -> Path:
    return data_dir() / "fashion-mnist"


def fetch_fashion_mnist(force: bool = False) -> Path:
    """Make sure Fashion-MNIST's four idx files are cached; returns their directory."""
    out = fashion_dir()
    names = [n for pair in _FASHION_FILES.values() for n in pair]
    if all((out / n).exists() for n in names) and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = _debian_unpack(FASHION_PACKAGE, tmp, "or skip the Fashion-MNIST parts")
        for n in names:
            src = next(root.rglob(n))
            part = out / (n + ".part")
            shutil.copyfile(src, part)
            os.replace(part, out / n)
    return out


def fashion_mnist(split: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Images (N, 1, 28, 28) float in [0, 1] and labels (N,) of split "train" (60k) or "test" (10k)."""
    import numpy as np
    import torch

    if split not in _FASHION_FILES:
        raise EdgeError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(_FASHION_FILES)}")
    d = fashion_dir()
    img_f, lab_f = (d / n for n in _FASHION_FILES[split])
    if not img_f.exists() or not lab_f.exists():
        raise EdgeError(f"Fashion-MNIST is not in {d}; run `edge data --fashion` first")
    try:
        img = np.frombuffer(gzip.decompress(img_f.read_bytes()), dtype=np.uint8, offset=16)
        lab = np.frombuffer(gzip.decompress(lab_f.read_bytes()), dtype=np.uint8, offset=8)
        img = img.reshape(len(lab), 1, 28, 28)
    except (OSError, EOFError, ValueError) as e:
        raise EdgeError(f"Fashion-MNIST files in {d} are corrupt ({e}); run `edge data --fashion --force`") from None
    return torch.from_numpy(img.astype(np.float32) / 255.0), torch.from_numpy(lab.astype(np.int64))


def _run(cmd: list[str], cwd: str, why: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise EdgeError(f"{cmd[0]} not found; {why}")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise EdgeError(f"{why} ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")


def _read_rdb(rdb: Path) -> dict[str, list[str]]:
    """R lazy-load database: the .rdx index (gzip) maps names to (offset, length) in the .rdb,
    whose records are a 4-byte length followed by a zlib stream of an R serialization."""
    import rdata

    def parse(raw: bytes):
        with warnings.catch_warnings():  # bare serializations are "assumed RDS", which they are
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress(rdb.with_suffix(".rdx").read_bytes()))
    blob = rdb.read_bytes()
    novels = {}
    for name, (off, length) in index["variables"].items():
        if str(name) in NOVELS:
            lines = parse(zlib.decompress(blob[int(off) + 4: int(off) + int(length)]))
            novels[str(name)] = [str(s) for s in lines]
    if set(novels) != set(NOVELS):
        raise EdgeError(f"{rdb} does not hold the six novels (found {sorted(novels)})")
    return novels


@dataclass(frozen=True)
class Passages:
    texts: list[str]
    labels: list[int] | None  # novel index, when known
    label_names: tuple[str, ...] = ()
    block: int = BLOCK  # consecutive passages kept together in one split (neighbours share context)

    def split(self, name: str) -> "Passages":
        """One of train / calib / probe / test: blocks of `block` consecutive passages, index mod 20."""
        if name not in SPLITS:
            raise EdgeError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
        keep = [i for i in range(len(self.texts)) if (i // self.block) % 20 in SPLITS[name]]
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return Passages([self.texts[i] for i in keep], labels, self.label_names, self.block)

    def sample(self, n: int | None, seed: int = 0) -> "Passages":
        """n passages drawn at random (seeded) from the whole split, in their order: unlike `head`,
        which takes the first blocks and so only some of the labels."""
        if n is None or n >= len(self.texts):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.texts)), n))
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return Passages([self.texts[i] for i in keep], labels, self.label_names, self.block)

    def head(self, n: int) -> "Passages":
        return Passages(self.texts[:n], self.labels[:n] if self.labels else None, self.label_names, self.block)


def austen_passages(words: int = 40) -> Passages:
    """The six novels as passages of `words` words, labelled with their novel."""
    path = austen_path()
    if not path.exists():
        raise EdgeError(f"{path} is missing; run `edge data` (or the README's setup command) first")
    try:
        novels = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeError(f"{path} is corrupt; run `edge data --force` to fetch it again") from None
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}") from None
    bad = [n for n in NOVELS if not isinstance(novels, dict) or not isinstance(novels.get(n), list)
           or not all(isinstance(line, str) for line in novels[n]) or len(" ".join(novels[n]).split()) < 20 * words]
    if bad:
        raise EdgeError(f"{path} is not the novels' cache (missing, empty or malformed: {', '.join(bad)}); "
                        "run `edge data --force` to fetch it again")
    texts, labels = [], []
    for label, name in enumerate(NOVELS):
        stream = " ".join(novels[name]).split()
        for i in range(0, len(stream) - words + 1, words):
            texts.append(" ".join(stream[i: i + words]))
            labels.append(label)
    return Passages(texts, labels, NOVELS)


def text_file_passages(path: str | Path) -> Passages:
    """A user's own text: one passage per non-empty line (UTF-8)."""
    path = Path(path)
    texts = [t for t in _lines(path, "text") if t]
    if len(texts) < 20:
        raise EdgeError(f"{path} has {len(texts)} non-empty lines; at least 20 are needed for the splits")
    return Passages(texts, None, block=1)  # lines of a user's file: split line by line


def _lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 file, stripped, without the empty ones at its end."""
    if not path.is_file():
        raise EdgeError(f"{what} file {path} not found; pass a UTF-8 file with one {'passage' if what == 'text' else 'label'} "
                        "per line")
    try:
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise EdgeError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}") from None
    while lines and not lines[-1]:
        lines.pop()
    return lines


def labelled_passages(text: str | Path, labels: str | Path) -> Passages:
    """A user's own labelled passages: line i of `labels` is the class of line i of `text` (any
    word or name; the classes are numbered in sorted order). An empty text line is skipped with its
    label. Split line by line, as text_file_passages."""
    text, labels = Path(text), Path(labels)
    texts, names = _lines(text, "text"), _lines(labels, "labels")
    if len(texts) != len(names):
        raise EdgeError(f"{labels} has {len(names)} lines but {text} has {len(texts)}; give one label per line of the text")
    pairs = [(t, n, i) for i, (t, n) in enumerate(zip(texts, names), 1) if t]
    empty = [i for _, n, i in pairs if not n]
    if empty:
        raise EdgeError(f"{labels}: line {empty[0]} is empty, but line {empty[0]} of {text} is a passage; give every "
                        "passage its label")
    classes = tuple(sorted({n for _, n, _ in pairs}))
    if len(classes) < 2:
        raise EdgeError(f"{labels} names {len(classes)} class; a classifier needs at least 2")
    if len(pairs) < 20:
        raise EdgeError(f"{text} has {len(pairs)} non-empty lines; at least 20 are needed for the splits")
    return Passages([t for t, _, _ in pairs], [classes.index(n) for _, n, _ in pairs], classes, block=1)


def read_passages(text: str | Path | None = None, labels: str | Path | None = None) -> Passages:
    """The passages a step reads: Jane Austen's novels, labelled with their novel (the default), a
    text file (one passage per line), or a text file and its labels file (labelled_passages)."""
    if labels is not None and text is None:
        raise EdgeError("labels go with the passages they label: pass the text file (--text) too")
    if text is None:
        return austen_passages()
    return text_file_passages(text) if labels is None else labelled_passages(text, labels)


def batches(tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Tokenize `texts` into padded batches, in order; each text cut to max_length tokens, or to the
    tokenizer's model_max_length where that is shorter (edge.load_pretrained sets it to the positions
    the model has)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 2 <= limit < max_length:
        max_length = limit
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i: i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out
