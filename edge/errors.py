"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class EdgeError(Exception):
    """A problem with what the user asked for (bad path, bad value, corrupt file), not a bug."""
