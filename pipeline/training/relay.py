"""Rank 0's events, relayed to the process that called `fit`, which is the run's only MLflow writer.

Ray Train V2 runs user callbacks in its controller actor, not in the caller, so the workers' rank 0 sends
its events (first step, step, epoch metrics, restarts, final) through a Ray queue instead; a thread here
hands them on. The workers then need no tracking credentials, and nothing secret reaches their runtime
environment or Ray's logs."""
from __future__ import annotations

import threading
from queue import Empty
from typing import Callable


STOP = {"kind": "relay-stop"}  # put by the relay's own process once the run has ended: the reader stops waiting


class Relay:
    """A Ray queue the workers put events into, and a thread that passes each to `handle`."""

    def __init__(self, handle: Callable[[dict], None] | None):
        self.handle = handle
        self.queue = None
        self._stop = threading.Event()
        # Ray's queue is an async actor, which does not promise to run puts in the order they were sent: each
        # sender numbers its events, and one held back here waits for those before it.
        self._next: dict[str, int] = {}
        self._held: dict[str, dict[int, dict]] = {}
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
        try:
            self.queue.put_nowait(STOP)
        except Exception:  # the queue actor is gone: the thread stops on its own
            pass
        # The thread is the queue's only reader, to the last event, so events are handled in the order sent
        # (a second reader draining beside it could pass a later event before the one the thread holds).
        self._thread.join(timeout=60)
        self.queue.shutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if (event := self.queue.get(timeout=0.5)) == STOP:
                    break
                self._pass(event)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run is ending
                break
        self._drain()

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                if (event := self.queue.get_nowait()) != STOP:
                    self._pass(event)
        except Exception:
            pass
        for sender, held in self._held.items():  # one never arrived (its sender died): pass on the rest
            for seq in sorted(held):
                self._handle(held[seq])

    def _pass(self, event: dict) -> None:
        sender, seq = event.pop("sender", None), event.pop("seq", None)
        if sender is None:
            return self._handle(event)
        held = self._held.setdefault(sender, {})
        held[seq] = event
        expected = self._next.get(sender, 0)
        while expected in held:
            self._handle(held.pop(expected))
            expected += 1
        self._next[sender] = expected

    def _handle(self, event: dict) -> None:
        try:
            self.handle(event)
        except Exception as exc:  # a failed write must not stop the relay; the run's end reconciles
            import logging

            logging.getLogger(__name__).warning("progress event not handled: %s", exc)

