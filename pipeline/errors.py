"""User-facing errors: caught by the CLI and printed as one line, never a traceback."""


class PipelineError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
