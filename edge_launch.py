"""The `edge` console command's entry point, outside the edge package: Ctrl-C while Python still
loads edge (torch, transformers: seconds) exits 130 with one line instead of a traceback, and so does
one after the command has put its output in place (it is then ignored)."""
import os
import signal
import sys

INTERRUPTED = "edge: interrupted; nothing was written"


def main() -> int:
    try:
        from edge.cli import main as edge_main
        from edge.errors import interrupted
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    rc = edge_main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the command is over: a late Ctrl-C changes nothing)
    if interrupted():  # a Ctrl-C that a library swallowed while the command ran: exit 130 whatever
        sys.stdout.flush()  # the interpreter's shutdown would make of the exception it left behind
        sys.stderr.flush()
        os._exit(130)
    return rc


if __name__ == "__main__":
    sys.exit(main())
