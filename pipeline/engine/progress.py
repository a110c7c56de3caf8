"""What a person sees while a workflow runs: one live line per running unit (epoch, loss, accuracy,
images/s, ETA) above which every unit's events print (epochs, resumes, failures, results)."""
from __future__ import annotations

import threading
import time
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table


def epoch_line(m: dict) -> str:
    """The per-epoch line of a training run: classification (train and validation scores) or contrastive
    pretraining (loss, temperature, held-out retrieval)."""
    if "temperature" in m:
        zero_shot = f" | val zero-shot top-1 {m['val_zero_shot_top1']:.2f}%" if "val_zero_shot_top1" in m else ""
        return (f"epoch {int(m['epoch'])}: loss {m['train_loss']:.4f} temperature {m['temperature']:.4f} | held-out "
                f"R@1 i2t {m['i2t_r1']:.1f}% t2i {m['t2i_r1']:.1f}%, R@5 i2t {m['i2t_r5']:.1f}% t2i {m['t2i_r5']:.1f}%"
                f"{zero_shot} | {m['samples_per_sec']:,.0f} img/s, {m['epoch_time_s']:.1f} s")
    val = (f"val loss {m['val_loss']:.4f} top-1 {m['val_top1']:.2f}% top-5 {m['val_top5']:.2f}%"
           if "val_loss" in m else "no validation split")
    return (f"epoch {int(m['epoch'])}: train loss {m['train_loss']:.4f} acc {m['train_top1']:.2f}% | {val} | "
            f"{m['samples_per_sec']:,.0f} img/s, {m['epoch_time_s']:.1f} s")


class WorkflowDisplay:
    """Prints lines for everyone (thread-safe); on a terminal, also a live table of the running units."""

    def __init__(self, console: Console):
        self.console = console
        self.rows: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._live = Live(console=console, refresh_per_second=2, transient=True, get_renderable=self._table) \
            if console.is_terminal else None

    def __enter__(self) -> "WorkflowDisplay":
        if self._live:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.stop()

    @property
    def width(self) -> int:
        return self.console.width

    def print(self, *objects, **kwargs) -> None:
        with self._lock:
            self.console.print(*objects, **kwargs)

    def handler(self, unit: str, epochs: int) -> Callable[[dict], None]:
        """The events of one unit's rank 0, shown as its live row and as printed lines."""
        with self._lock:
            self.rows[unit] = {"epoch": f"0/{epochs}", "state": "starting workers", "started": time.time()}

        def show(event: dict) -> None:
            kind, row = event["kind"], self.rows.get(unit)
            if row is None:
                return
            if kind == "step":
                elapsed = time.time() - row.setdefault("epoch_started", time.time())
                per_step = elapsed / max(event["step"], 1)
                remaining = (event["steps"] - event["step"]) + (event["epochs"] - event["epoch"]) * event["steps"]
                row.update(epoch=f"{event['epoch']}/{event['epochs']}", state="training",
                           loss=f"{event['loss']:.4f}", rate=f"{event['images_per_sec']:,.0f}",
                           eta=_duration(per_step * remaining))
            elif kind == "epoch":
                m = event["metrics"]
                row.pop("epoch_started", None)
                row.update(epoch=f"{int(m['epoch'])}/{epochs}", state="evaluating" if int(m["epoch"]) == epochs
                           else "training", loss=f"{m['train_loss']:.4f}",
                           acc=f"{m.get('val_top1', m.get('train_top1', float('nan'))):.2f}%")
                self.print(f"[bold]{unit}[/] {epoch_line(m)}")
            elif kind == "resumed":  # before any step: a resumed run's first workers; later: a restart
                how = "continues" if row["state"] == "starting workers" else "workers restarted: resuming"
                self.print(f"[bold yellow]{unit}[/] {how} from its checkpoint after epoch {event['epoch']}")
            elif kind == "final":
                m = event["metrics"]
                if "top1" in m:
                    self.print(f"[bold green]{unit}[/] test: top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% "
                               f"(error {m['top1_err']:.2f}% / {m['top5_err']:.2f}%)")
                with self._lock:
                    self.rows.pop(unit, None)
        return show

    def done(self, unit: str) -> None:
        with self._lock:
            self.rows.pop(unit, None)

    def still_starting(self, after_s: float) -> list[str]:
        """Units whose workers have not started `after_s` seconds after their run did and that were not named."""
        now = time.time()
        with self._lock:
            return [unit for unit, row in self.rows.items() if row["state"] == "starting workers"
                    and now - row["started"] > after_s and not row.get("named")]

    def named(self, unit: str) -> None:
        with self._lock:
            if unit in self.rows:
                self.rows[unit]["named"] = True

    def _table(self) -> Table:
        table = Table(box=None, show_header=True, header_style="dim")
        for column in ("unit", "epoch", "state", "loss", "acc", "img/s", "ETA"):
            table.add_column(column)
        with self._lock:
            rows = dict(self.rows)
        for unit, row in rows.items():
            table.add_row(unit, row.get("epoch", ""), row.get("state", ""), row.get("loss", ""), row.get("acc", ""),
                          row.get("rate", ""), row.get("eta", ""))
        return table


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
