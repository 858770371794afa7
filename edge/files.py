"""Where and how edge writes files, with nothing heavy imported (the device side uses it too):
outputs go to a temporary name beside the target and are renamed into place (never half-written),
an existing output is replaced only when asked, and every file an artifact or model lists is
checked against its SHA-256."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge.errors import EdgeError, check_interrupt


def data_dir() -> Path:
    """$EDGE_DATA (default ~/.cache/edge), absolute: the measuring processes run in other directories."""
    return Path(os.environ.get("EDGE_DATA") or Path.home() / ".cache" / "edge").expanduser().absolute()


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


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
