"""Ctrl-C (SIGINT) and SIGTERM while a workflow runs: raised in the driver's main thread as `Interrupted`,
which the engine turns into KILLED runs and a line saying how to resume; the command then exits 130 or 143.

Ray Train installs its own SIGINT handler that exits the process (an `except KeyboardInterrupt` around
`fit()` would never run), and only in the main thread; units run in threads, so the main thread's handler
here is the one that sees the signal.
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: what the engine held is marked KILLED; the same command resumes."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def raising_interrupted(which: tuple[signal.Signals, ...] = SIGNALS):
    """While the block runs, SIGINT and SIGTERM (or `which`) raise `Interrupted` in the main thread."""
    previous = {sig: signal.getsignal(sig) for sig in which}

    def on_signal(signum, frame):
        raise Interrupted(signum)

    for sig in which:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupt_line(exc: KeyboardInterrupt, stopped: list[str], forced: list[str] = ()) -> str:
    """What an interrupt stopped and how to resume, for the terminal. `forced`: the stopped units that
    `--rerun` named, which the same command would train again from the start rather than resume."""
    how = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    what = f"unit(s) {', '.join(stopped)}" if stopped else "the workflow"
    resume = "Run the same command again to resume."
    if forced:
        resume = (f"Run the same command without --rerun to resume {', '.join(forced)} (with it, they train again "
                  "from the start).")
    return (f"[bold red]interrupted ({signal.Signals(how).name}):[/] stopped {what}; their runs are marked KILLED "
            f"and their checkpoints kept. {resume}")


def exit_interrupted(exc: KeyboardInterrupt) -> None:
    """End the process with 130 (SIGINT) or 143 (SIGTERM) at once.

    Not through the interpreter's exit: a sweep's Tune loop may still run in its unit's thread, the exit would
    shut Ray down under it, and Ray's core worker then ends the process with code 1. The workflow has marked
    its runs KILLED and said how to resume, and a local Ray cluster ends with this process (fate sharing)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + getattr(exc, "signum", signal.SIGINT))
