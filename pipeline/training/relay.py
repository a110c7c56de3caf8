"""Rank 0's events, relayed to the process that called `fit`, which is the run's only MLflow writer.

Ray Train V2 runs user callbacks in its controller actor, not in the caller, so the workers' rank 0 sends
its events (first step, step, epoch metrics, restarts, final) through a Ray queue instead; a thread here
hands them on. The workers then need no tracking credentials, and nothing secret reaches their runtime
environment or Ray's logs."""
from __future__ import annotations

import threading
from queue import Empty
from typing import Callable


class Relay:
    """A Ray queue the workers put events into, and a thread that passes each to `handle`."""

    def __init__(self, handle: Callable[[dict], None] | None):
        self.handle = handle
        self.queue = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Relay":
        if self.handle is not None:
            from ray.util.queue import Queue

            self.queue = Queue(actor_options={"num_cpus": 0})
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.queue is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        self.queue.shutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run is ending
                return

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self._pass(self.queue.get_nowait())
        except Exception:
            pass

    def _pass(self, event: dict) -> None:
        try:
            self.handle(event)
        except Exception as exc:  # a failed write must not stop the relay; the run's end reconciles
            import logging

            logging.getLogger(__name__).warning("progress event not handled: %s", exc)

