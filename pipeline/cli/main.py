"""The entry point: every command module registered, errors as one line."""
from __future__ import annotations

import atexit
import os
import sys

from rich.console import Console
from rich.markup import escape

# isort: off
from pipeline.cli import workflow, results, jobs, cluster, benchmarks  # noqa: F401  (each registers its commands, in this order)
# isort: on
from pipeline.cli.app import app
from pipeline.errors import PipelineError

_exit_code: int | None = None  # the command's exit code once it has ended by returning or by sys.exit


def main() -> None:
    global _exit_code
    atexit.register(_end_process)  # registered before any library's handler, so it runs after all of them
    try:
        _run()
        _exit_code = 0
    except SystemExit as exc:
        _exit_code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    finally:
        # Left to the interpreter's exit, Ray's shutdown first waits half a second for late log lines of workers
        # whose logs this command does not show.
        if (ray := sys.modules.get("ray")) is not None and ray.is_initialized():
            ray.shutdown()


def _run() -> None:
    try:
        app()
    except PipelineError as exc:
        from pipeline.tracking.store import redact

        # Rich markup off for the message: a URI's [brackets] or a value like [1 must print as they are.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception:  # a bug, or a library's error nobody turned into one line: its traceback, with no password
        import traceback

        from pipeline.tracking.store import redact

        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)


def _end_process() -> None:
    """The last exit handler: once the command has ended and every other exit handler has run (Ray's, MLflow's,
    temporary folders'), end the process without the interpreter's finalization, which spends 1.5-3 s tearing
    down the modules of torch, timm, MLflow and Ray. An interrupt keeps the interpreter's own exit."""
    import logging

    if _exit_code is None:
        return
    logging.shutdown()  # its handler was registered before this one
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can reach it
            pass
    os._exit(_exit_code)


if __name__ == "__main__":
    main()
