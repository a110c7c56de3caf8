"""User-facing errors: caught by the CLI and printed as one line, never a traceback."""


class PipelineError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class UnitFailed(Exception):
    """A workflow unit ended without its result; the message is the one-line reason."""

    @classmethod
    def of(cls, error: BaseException | None, what: str = "the run reported no checkpoint") -> "UnitFailed":
        """From a failed Ray run's error: its last line, which names the cause under Ray's wrapping."""
        lines = str(error).strip().splitlines() if error is not None else []
        return cls(lines[-1] if lines else what)
