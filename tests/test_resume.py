"""Resume on a real local Ray cluster with a tiny loop built from the harness both worker loops use: the newest
checkpoint on disk is resumed from even when Ray's own snapshot of its checkpoints lags, a damaged one falls
back to the one before it, and a worker killed while writing a checkpoint leaves no copy of it behind."""
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.spec.sections import ResourcesConfig

EPOCHS = 4


@dataclass(frozen=True)
class TinyConfig:
    marker: str  # saved in every checkpoint, to find this test's copies
    crash_at: int | None = None  # the epoch at whose start the worker fails (an interrupt)
    die_in_report: bool = False  # ... killed while rank 0 writes a checkpoint
    progress: Any = None
    label: str = "tiny"
    resume_from: str | None = None
    staging: str | None = None


class Die:
    """Saving it kills the process: a worker killed between writing a checkpoint and Ray's copy of it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


def tiny_loop(config: TinyConfig) -> None:
    from pipeline.training.harness import Events, checkpoint_state, report, resume

    model = torch.nn.Linear(2, 1)
    events = Events(config)
    start, history = resume(events, config.resume_from, model=model)
    for epoch in range(start, EPOCHS):
        if epoch == config.crash_at:
            if config.die_in_report:
                report({"epoch": float(epoch)}, {"epoch": epoch, "history": history, "marker": config.marker},
                       {"die": Die()}, config.staging)
            raise RuntimeError("interrupted")
        events("step", epoch=epoch + 1)  # an epoch trained in this attempt
        history.append({"epoch": float(epoch + 1)})
        report(history[-1], checkpoint_state(0, epoch + 1, history, model=model, marker=config.marker),
               staging=config.staging)


def run(ray_cluster, folder: Path, config: TinyConfig, events: list, notes: list | None = None):
    """Ray's Result of one attempt (a failed one raises)."""
    from pipeline.training.harness import fit

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    return fit(tiny_loop, config, ResourcesConfig(num_workers=1, cpus_per_worker=1, max_failures=0),
               str(folder), "tiny", on_event=events.append, say=(notes if notes is not None else []).append)


def interrupted(ray_cluster, folder: Path, config: TinyConfig) -> list[dict]:
    events: list[dict] = []
    with pytest.raises(Exception, match="interrupted|died"):
        run(ray_cluster, folder, config, events)
    return events


def checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "tiny").glob("checkpoint_*") if p.is_dir())


def copies_of(marker: str, *roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for state in root.rglob("ckpt-*/state.pt"):
            try:
                if torch.load(state, weights_only=True).get("marker") == marker:
                    found.append(state.parent)
            except Exception:
                continue
    return found


def trained(events: list[dict]) -> list[int]:
    return [e["epoch"] for e in events if e["kind"] == "step"]


def resumed_from(events: list[dict]) -> list[int]:
    return [e["epoch"] for e in events if e["kind"] == "resumed"]


def test_a_checkpoint_newer_than_rays_snapshot_is_resumed_and_a_killed_report_leaves_no_copy(ray_cluster, tmp_path):
    from pipeline.training.harness import read_state

    marker = uuid.uuid4().hex
    events = interrupted(ray_cluster, tmp_path, TinyConfig(marker, crash_at=3, die_in_report=True))
    assert trained(events) == [1, 2, 3]
    # The worker died holding a checkpoint it was writing: no copy of it is left, in the temp folder or beside
    # the run's checkpoints.
    assert not copies_of(marker, Path(tempfile.gettempdir()), tmp_path)
    # Ray's snapshot lags the folders on disk (here: it was never written): Ray alone would start from scratch.
    (tmp_path / "tiny" / "checkpoint_manager_snapshot.json").unlink()

    events = []
    second = run(ray_cluster, tmp_path, TinyConfig(marker), events)
    assert second.error is None, second.error
    assert resumed_from(events) == [3] and trained(events) == [4]  # epochs 1-3 were not trained again
    assert read_state(second.checkpoint)["epoch"] == EPOCHS
    assert not copies_of(marker, Path(tempfile.gettempdir()), tmp_path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_it(ray_cluster, tmp_path):
    marker = uuid.uuid4().hex
    interrupted(ray_cluster, tmp_path, TinyConfig(marker, crash_at=3))
    older, newest = checkpoints(tmp_path)  # Ray keeps two: epochs 2 and 3
    intact = (older / "state.pt").read_bytes()
    for folder in (older, newest):  # a copy cut short
        data = (folder / "state.pt").read_bytes()
        (folder / "state.pt").write_bytes(data[: len(data) // 2])

    with pytest.raises(PipelineError) as failed:  # none loads: one line, the file and the way out
        run(ray_cluster, tmp_path, TinyConfig(marker), [])
    message = str(failed.value)
    assert "\n" not in message and str(newest / "state.pt") in message and "--rerun" in message, message

    (older / "state.pt").write_bytes(intact)
    notes: list[str] = []
    events = []
    second = run(ray_cluster, tmp_path, TinyConfig(marker), events, notes)
    assert second.error is None, second.error
    assert len(notes) == 1 and str(newest / "state.pt") in notes[0] and str(older) in notes[0], notes
    assert resumed_from(events) == [2] and trained(events) == [3, 4]


def test_the_relay_hands_on_each_senders_events_in_the_order_sent(ray_cluster):
    """Ray's queue is an async actor and may run puts out of order: the relay restores each sender's order,
    and at the end passes on what waits behind an event that never came."""
    from pipeline.training.relay import Relay

    handled: list[tuple[str, int]] = []
    with Relay(lambda e: handled.append((e["kind"], e["n"]))) as relay:
        for sender, order in (("a", [1, 0, 2]), ("b", [0, 2, 3])):  # b's event 1 is lost
            for seq in order:
                relay.queue.put({"kind": sender, "n": seq, "sender": sender, "seq": seq})
    assert [n for kind, n in handled if kind == "a"] == [0, 1, 2]
    assert [n for kind, n in handled if kind == "b"] == [0, 2, 3]


def settings_loop(config: TinyConfig) -> None:
    from pipeline.engine.cluster import LOCAL_TRAIN_SETTINGS
    from pipeline.training.harness import Events

    Events(config)("settings", values={name: os.environ.get(name, "unset") for name in LOCAL_TRAIN_SETTINGS})


def test_a_train_run_on_this_machine_starts_no_preemption_watcher_and_its_workers_get_the_local_settings(
        ray_cluster, tmp_path):
    """On a cluster of this machine the Train controller polls its workers every 0.25 s, not Ray's 2 s, and no
    preemption watcher starts with a run (an actor of its own, for spot instances this machine has none of). No
    run hands Ray Train data sets, so none starts Ray Train's dataset manager either."""
    from ray.util.state import list_actors

    from pipeline.engine.cluster import LOCAL_TRAIN_SETTINGS
    from pipeline.training.harness import fit

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    address = ray_cluster.get_runtime_context().gcs_address
    actors = lambda: {a.actor_id: a.class_name  # noqa: E731
                      for a in list_actors(address, limit=10_000, raise_on_missing_output=False)}
    before = actors()
    events: list[dict] = []
    result = fit(settings_loop, TinyConfig(marker="settings"), ResourcesConfig(num_workers=1, cpus_per_worker=1,
                 max_failures=0), str(tmp_path), "settings", on_event=events.append)
    assert result.error is None
    assert [e["values"] for e in events if e["kind"] == "settings"] == [
        {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}]
    assert set(LOCAL_TRAIN_SETTINGS) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"}
    classes = {name for actor_id, name in actors().items() if actor_id not in before}  # this run's actors
    assert "RayTrainWorker" in classes and "TrainController" in classes  # the listing sees them
    assert "PreemptionWatcher" not in classes and "DatasetManager" not in classes
