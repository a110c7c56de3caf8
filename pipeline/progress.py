"""Training progress a person can follow: rank 0 sends events through a Ray queue, the driver prints them."""
from __future__ import annotations

import threading
from queue import Empty

from rich.console import Console


class ProgressPrinter:
    """Reads progress events in a background thread while `trainer.fit()` blocks the driver."""

    def __init__(self, console: Console):
        from ray.util.queue import Queue

        self.console = console
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._status = None
        self.first_step_at: float | None = None  # wall-clock time of the first training step

    def __enter__(self):
        self._status = self.console.status("starting workers...")
        self._status.start()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        self._status.stop()
        self.queue.shutdown()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.show(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run is ending
                return

    def _drain(self):
        try:
            while not self.queue.empty():
                self.show(self.queue.get_nowait())
        except Exception:
            pass

    def show(self, event: dict) -> None:
        model = event["model"]
        if event["kind"] == "first_step":
            self.first_step_at = event["time"]
        elif event["kind"] == "step":
            self._status.update(
                f"[bold]{model}[/] epoch {event['epoch']}/{event['epochs']} step {event['step']}/{event['steps']} "
                f"loss {event['loss']:.4f}  {event['images_per_sec']:,.0f} img/s")
        elif event["kind"] == "epoch":
            m = event["metrics"]
            self.console.print(
                f"[bold]{model}[/] epoch {int(m['epoch'])}: train loss {m['train_loss']:.4f} "
                f"acc {m['train_top1']:.2f}% | val loss {m.get('val_loss', float('nan')):.4f} "
                f"top-1 {m.get('val_top1', float('nan')):.2f}% top-5 {m.get('val_top5', float('nan')):.2f}% | "
                f"{m['train_samples_per_sec']:,.0f} img/s, {m['epoch_time_s']:.1f} s")
            self._status.update(f"[bold]{model}[/] next epoch...")
        elif event["kind"] == "resumed":
            self.console.print(f"[bold yellow]{model}[/] workers restarted: resuming after epoch {event['epoch']}")
        elif event["kind"] == "final":
            m = event["metrics"]
            self.console.print(f"[bold green]{model}[/] test: top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% "
                               f"(error {m['top1_err']:.2f}% / {m['top5_err']:.2f}%)")
