"""The entry point: every command module registered, errors as one line."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

# isort: off
from pipeline.cli import workflow, results, jobs, cluster, benchmarks  # noqa: F401  (each registers its commands, in this order)
# isort: on
from pipeline.cli.app import app
from pipeline.errors import PipelineError


def main() -> None:
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
    finally:
        # Left to the interpreter's exit, Ray's shutdown first waits half a second for late log lines of workers
        # whose logs this command does not show.
        if (ray := sys.modules.get("ray")) is not None and ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    main()
