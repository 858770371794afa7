"""What a command-line user sees: edge's own lines on the terminal; other libraries' warnings,
log records and C-level messages (executorch's deprecation notes, cpuinfo lines) in a log file that
an error names; Ctrl-C noticed even where a library swallows it.

    with quiet_console(verbose=False) as log:   # log: the file the noise goes to (None: verbose)
        ...
"""
from __future__ import annotations

import io
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from edge.errors import interrupt_, reset_interrupt_

KEEP_LOGS = 20  # the newest logs kept in the log directory
_terminal: list = [None]  # where edge's own stderr lines go while quiet_console is on


def terminal():
    """The stream for edge's own messages and progress bars: the user's terminal (stderr), also
    while quiet_console sends everything else written to stderr to the log."""
    return _terminal[0] or sys.stderr


def log_dir() -> Path:
    from edge.files import data_dir

    return data_dir() / "logs"


def _open_log() -> tuple[int, Path]:
    """A new log file (descriptor, path) in the data directory's logs/, or in the temporary directory
    when that cannot be made (EDGE_DATA pointing at a file is an error the command reports itself)."""
    name = f"edge-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        d = log_dir()
        d.mkdir(parents=True, exist_ok=True)
        old = sorted(d.glob("edge-*.log"))[:-KEEP_LOGS + 1 or None]
        for f in old:
            f.unlink(missing_ok=True)
        path = d / name
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), path
    except OSError:
        fd, path = tempfile.mkstemp(prefix="edge-", suffix=".log")
        return fd, Path(path)


@contextmanager
def quiet_console(verbose: bool = False):
    """Route everything but edge's own output to a log file (yields its path; None when verbose).
    sys.stdout stays the terminal, and edge's own messages reach it through terminal(); sys.stderr
    and file descriptor 2 (what libraries, C and C++ code and subprocesses write warnings to: ExecuTorch
    logs its cpuinfo lines through sys.stderr) go to the log, and so do Python warnings and logging."""
    reset_interrupt_()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # (not in a thread, not under a test's own handler)
        signal.signal(signal.SIGINT, _on_sigint)
    if verbose:
        try:
            yield None
        finally:
            signal.signal(signal.SIGINT, previous)
        return
    fd, path = _open_log()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    old_stderr, old_show = sys.stderr, warnings.showwarning
    root = logging.getLogger()
    handler = logging.StreamHandler(io.TextIOWrapper(os.fdopen(os.dup(fd), "wb", buffering=0), write_through=True))
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    old_handlers, old_level = root.handlers[:], root.level
    log = handler.stream

    def show(message, category, filename, lineno, file=None, line=None):
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        os.dup2(fd, 2)
        # edge's own lines (and progress bars) still reach the terminal, through the saved descriptor
        _terminal[0] = io.TextIOWrapper(os.fdopen(os.dup(saved_fd), "wb", buffering=0), write_through=True,
                                        errors="replace")
        sys.stderr = log
        warnings.showwarning = show
        root.handlers = [handler]  # (a library's later logging.basicConfig then adds nothing)
        root.setLevel(logging.INFO)
        yield path
    finally:
        try:
            _terminal[0].flush()
            _terminal[0].close()
        except (OSError, AttributeError):
            pass
        _terminal[0] = None
        sys.stderr = old_stderr
        warnings.showwarning = old_show
        root.handlers, root.level = old_handlers, old_level
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(fd)
        handler.stream.close()
        signal.signal(signal.SIGINT, previous)


def _on_sigint(signum, frame):
    # remembered first: a library that swallows the KeyboardInterrupt (an "Exception ignored in ..."
    # inside a destructor) cannot make the command finish as if nothing happened: every atomic write
    # checks the flag before its final rename, and the CLI exits 130 when it is set
    interrupt_()
    raise KeyboardInterrupt


__all__ = ["quiet_console", "log_dir", "terminal"]
