"""Stopping Ray nodes started by `ray start --block`, each the leader of a process group of its own."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def stop_process_groups(groups: list[tuple[int, subprocess.Popen | None]], grace: float = 5.0) -> None:
    """SIGTERM to each (process group id, its leader if our child), then SIGKILL to what is left of them after
    `grace` s in all: `ray start --block` drains its node for up to 30 s, and a cluster whose work has ended has
    nothing to drain. Our children are reaped."""
    for pgid, _ in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.time() + grace
    for pgid, leader in groups:
        while time.time() < deadline and _group_alive(pgid, leader):
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        if leader is not None:
            leader.wait()


def _group_alive(pgid: int, leader: subprocess.Popen | None) -> bool:
    if leader is not None:
        leader.poll()  # reaps it once it has exited: a zombie still counts as a member of its group
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
