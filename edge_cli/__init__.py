"""The `edge` command: the top layer, above edge, export and profiler (it imports them; nothing
imports it, except `python -m edge`, which runs it). Its verbs are in edge_cli.commands; this entry
point imports them inside a guard, so that Ctrl-C while Python still loads torch and transformers
(seconds) exits 130 with one line instead of a traceback, and so does one after the command has put
its output in place (it is then ignored).

    edge --help          # the console script (pyproject: edge = "edge_cli:main")
    python -m edge_cli   # the same (python -m edge too)
"""
import os
import signal
import sys

INTERRUPTED = "edge: interrupted; nothing was written"


def main(argv: list[str] | None = None) -> int:
    """The `edge` command. Exit codes: 0 done; 1 a latency budget failed (`edge profile`) or an
    internal error (its traceback in the log file it names); 2 a user error (one line); 130 Ctrl-C."""
    try:
        import edge
        from edge_cli.commands import run
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    rc = run(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the command is over: a late Ctrl-C changes nothing)
    if edge.interrupted():  # a Ctrl-C that a library swallowed while the command ran: exit 130 whatever
        sys.stdout.flush()  # the interpreter's shutdown would make of the exception it left behind
        sys.stderr.flush()
        os._exit(130)
    return rc
