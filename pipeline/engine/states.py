"""A unit's state in the tracking store: cached, held by a live driver (lease), resumable or pending."""
from __future__ import annotations

import fnmatch
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.engine.units import Unit
from pipeline.tracking.queries import find_runs
from pipeline.tracking.tags import KEY_TAG, LEASE_EXPIRES_TAG, LEASE_OWNER_TAG

LEASE_S = 30.0  # a lease not renewed for this long belongs to a dead driver


HEARTBEAT_S = 5.0


WAIT_POLL_S = 3.0


CLAIM_PREFIX = "claim."  # a driver's claim on a dead driver's run, while it takes it over
STARVED_S = 60.0  # a unit's workers not started after this long, for want of resources, are named


@dataclass
class UnitState:
    unit: Unit
    state: str = "pending"  # pending, cached, resumable, held, running, finished, failed, skipped
    run: Any = None  # the MLflow run found for its key
    detail: str = ""
    output: dict[str, Any] | None = None


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_alive(run, now: float | None = None) -> bool:
    """Whether a RUNNING run is still held by a live driver."""
    tags = run.data.tags
    return owner_alive(tags.get(LEASE_OWNER_TAG), tags.get(LEASE_EXPIRES_TAG), now)


def claim_alive(value: str) -> bool:
    """Whether a claim tag (`owner|expires`) is a live driver's."""
    owner, _, expires = value.partition("|")
    return owner_alive(owner, expires)


def owner_alive(owner: str | None, expires: str | None, now: float | None = None) -> bool:
    """Whether a lease of `owner` (host:pid:id) until `expires` (unix seconds) still holds: not expired, and
    on this host its process still runs."""
    if not owner or not expires:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False  # its driver on this machine is gone
        except PermissionError:
            pass
    return float(expires) > (now or time.time())


def unit_runs(tracker, experiment_id: str, key: str) -> list:
    """The runs of a unit's key, newest first."""
    return find_runs(tracker.client, experiment_id, {KEY_TAG: key}, max_results=50)


def classify(state: UnitState, runs: list, forced: bool) -> None:
    """What the runs of a unit's key say: cached, held by a live driver, resumable, or pending."""
    if not forced and (done := [r for r in runs if r.info.status == "FINISHED"]):
        state.state, state.run = "cached", done[0]
        return
    if live := [r for r in runs if r.info.status == "RUNNING" and lease_alive(r)]:
        state.state, state.run = "held", live[0]
        return
    resumable = [r for r in runs if r.info.status in ("RUNNING", "KILLED")]
    if resumable and not forced:
        state.state, state.run = "resumable", resumable[0]
        last = resumable[0].data.metrics.get("epoch")
        state.detail = f"epoch {int(last)} done" if last else "no epoch done"
        return
    failed = [r for r in runs if r.info.status == "FAILED"]
    state.state = "pending"
    if failed and not forced:
        state.detail = f"last attempt failed: {failed[0].data.tags.get('error', '?')[:120]}"


def matches(unit: Unit, patterns) -> bool:
    return any(p == "all" or fnmatch.fnmatchcase(unit.name, p) or (unit.model and fnmatch.fnmatchcase(unit.model, p))
               for p in patterns)
