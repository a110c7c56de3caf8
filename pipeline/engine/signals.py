"""SIGINT and SIGTERM while a workflow runs: an exception the engine turns into KILLED runs."""
from __future__ import annotations

import signal


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: what the engine held is marked KILLED; the same command resumes."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
