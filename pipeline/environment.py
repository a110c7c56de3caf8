"""Environment variables set for a while: read by the processes started meanwhile (Ray's, which inherit this
process's environment) or by libraries at each call (MLflow's retry settings)."""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def environment_set(variables: dict[str, str]):
    """`variables` in os.environ inside the block, the previous values (or their absence) restored after it."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
