"""User-facing errors: the CLI prints their message on one line and exits with code 2. And the
Ctrl-C flag that every atomic write checks before its final rename (edge.console sets it)."""


class EdgeError(Exception):
    """A problem with what the user asked for (bad path, bad value, corrupt file), not a bug."""


_interrupted = [False]


def interrupt_() -> None:
    """Remember that the user pressed Ctrl-C (even if a library then swallows the KeyboardInterrupt)."""
    _interrupted[0] = True


def reset_interrupt_() -> None:
    _interrupted[0] = False


def interrupted() -> bool:
    return _interrupted[0]


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed: called before an output is put in place."""
    if _interrupted[0]:
        raise KeyboardInterrupt
