"""The workflow engine: a spec's stages fan out into units that form a DAG; units run concurrently as far
as the cluster allows, a unit whose key has a FINISHED run is reused, an unfinished one resumes.

How units run: each unit runs in a thread of this driver, and a unit that trains calls
`TorchTrainer(...).fit()` from that thread. Ray places each Train run's workers with its own placement
group (all workers at once, or it waits), so the scheduling across the cluster is Ray's; this engine only
orders units by what they need and admits a unit when its workers fit in what the running units leave
free, because a Train run that waits for resources still holds a controller and a placement-group cleaner
actor (hundreds of MB each): a 45-model zoo submitted at once would fill the head's memory. Threads rather
than Ray Tune trials or Ray tasks: a sweep unit is itself a Tune run (Tune inside a Tune trial is a trap),
this process stays the only MLflow writer (no credentials leave it), and Ray Train registers its SIGINT
handler only in the main thread, so an interrupt reaches this engine, which marks what it held KILLED.

Identity and leases: a unit's run carries its content key (`unit_key`); the driver holding it renews a
lease (`lease_owner`, `lease_expires`). A RUNNING run whose lease ran out (or whose owner process on this
host is gone) belongs to a dead driver and is taken over: the unit resumes from its Ray Train checkpoint
(`ray_train_name`) inside that run.
"""
from __future__ import annotations

import fnmatch
import os
import queue
import signal
import socket
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from pipeline import stages
from pipeline.config import Spec
from pipeline.context import PLANNERS, STAGE_ORDER, Job, RunContext
from pipeline.errors import PipelineError, UnitFailed
from pipeline.units import (CODE_TAG, KEY_TAG, LEASE_EXPIRES_TAG, LEASE_OWNER_TAG, TRAIN_NAME_TAG, UNIT_TAG, Unit,
                            code_version)

LEASE_S = 30.0  # a lease not renewed for this long belongs to a dead driver
HEARTBEAT_S = 5.0
WAIT_POLL_S = 3.0
STARVED_S = 60.0  # a unit's workers not started after this long, for want of resources, are named


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: what the engine held is marked KILLED; the same command resumes."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def plan(context: RunContext) -> list[Unit]:
    """The spec's units in stage order, each stage's planner seeing the units planned before it."""
    units: list[Unit] = []
    for name in STAGE_ORDER:
        if name in context.spec.stages:
            stages.load(name)
            units.extend(PLANNERS[name](context, list(units)))
    names = {u.name for u in units}
    for unit in units:
        if missing := [n for n in unit.needs if n not in names]:
            raise PipelineError(f"unit {unit.name} needs {missing[0]}, which no stage of the spec produces")
    return units


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
    owner, expires = tags.get(LEASE_OWNER_TAG), tags.get(LEASE_EXPIRES_TAG)
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


def find_runs(tracker, experiment_id: str, key: str) -> list:
    return tracker.client.search_runs([experiment_id], f"tags.{KEY_TAG} = '{key}'",
                                      order_by=["attributes.start_time DESC"], max_results=50)


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


def demand(unit: Unit) -> dict[str, float]:
    """The CPUs and GPUs a unit's workers hold while it runs."""
    if unit.resources is None:
        return {}
    r, n = unit.resources, unit.resources.num_workers * unit.parallel
    return {"CPU": n * r.cpus_per_worker, **({"GPU": n * r.gpus_per_worker} if r.gpus_per_worker else {})}


def cluster_shape() -> tuple[list[dict[str, float]], dict[str, float]]:
    """The alive nodes' resources and the cluster's total."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")], ray.cluster_resources()


def misfit(unit: Unit, nodes: list[dict[str, float]], total: dict[str, float]) -> str | None:
    """Why a unit's workers cannot run on the cluster as it is (one worker on some node, all of them in the
    cluster's total), or None."""
    if unit.resources is None:
        return None
    r = unit.resources
    worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    need = {k: v * r.num_workers for k, v in worker.items()}  # one Train run (one trial of a sweep)
    if not any(all(node.get(k, 0) >= v for k, v in worker.items()) for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0))) if nodes else {}
        return (f"one worker asks for {_describe(worker)} but the largest node has "
                f"{_describe({k: largest.get(k, 0) for k in worker})}")
    if any(total.get(k, 0) < v for k, v in need.items()):
        return (f"{r.num_workers} workers ask for {_describe(need)} but the cluster has "
                f"{_describe({k: total.get(k, 0) for k in need})}")
    return None


MISFIT_FIX = ("lower resources.num_workers / cpus_per_worker / gpus_per_worker for it "
              "(--set 'models.NAME.resources.num_workers=1'), or add nodes")


def check_fits(units: list[Unit], console) -> dict[str, float]:
    """Every unit's workers fit the cluster, or a one-line error before anything runs; returns the cluster's
    total resources. On a cluster this driver joined (RAY_ADDRESS), which an autoscaler may grow, a unit that
    does not fit is a warning, and it waits at most `resources.max_wait_s` for the nodes it needs."""
    nodes, total = cluster_shape()
    joined = bool(os.environ.get("RAY_ADDRESS"))
    for unit in units:
        if (problem := misfit(unit, nodes, total)) is None:
            continue
        if not joined:
            raise PipelineError(f"unit {unit.name}: {problem}: {MISFIT_FIX}")
        console.print(f"[yellow]warning:[/] unit {unit.name}: {problem}; it waits up to "
                      f"{unit.resources.max_wait_s:g} s for the cluster to grow")
    return total


def _describe(resources: dict[str, float]) -> str:
    return " + ".join(f"{v:g} {k}" for k, v in resources.items())


class Engine:
    def __init__(self, context: RunContext, units: list[Unit], rerun=()):
        self.context = context
        self.units = units
        self.rerun = list(rerun or ())
        self.states = {u.name: UnitState(u) for u in units}
        self.owner = this_owner()
        self.held: dict[str, str] = {}  # run id -> unit name (or "workflow")
        self.done: queue.Queue = queue.Queue()
        self.reused: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.board = None  # the leaderboard as last published

    # --- what is there already -------------------------------------------------------------------
    def forced(self, unit: Unit) -> bool:
        return matches(unit, self.rerun)

    def resolve(self, unit: Unit, outputs: dict[str, dict]) -> UnitState:
        state = self.states[unit.name]
        unit.resolve_key(outputs)
        if unit.cacheable and self.context.experiment_id is not None:
            classify(state, find_runs(self.context.tracker, self.context.experiment_id, unit.key), self.forced(unit))
        return state

    def resolve_static(self) -> None:
        """Keys and cache states of the units whose identity is known before anything runs."""
        for unit in self.units:
            if unit.identify is None or not (unit.needs or unit.after):
                self.resolve(unit, {})

    # --- leases ----------------------------------------------------------------------------------
    def hold(self, run_id: str, name: str) -> None:
        client = self.context.tracker.client
        client.set_tag(run_id, LEASE_OWNER_TAG, self.owner)
        client.set_tag(run_id, LEASE_EXPIRES_TAG, f"{time.time() + LEASE_S:.0f}")
        with self._lock:
            self.held[run_id] = name

    def release(self, run_id: str) -> None:
        with self._lock:
            self.held.pop(run_id, None)

    def heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                held = list(self.held)
            for run_id in held:
                try:
                    self.context.tracker.client.set_tag(run_id, LEASE_EXPIRES_TAG, f"{time.time() + LEASE_S:.0f}")
                except Exception:
                    pass  # a tracking server away for a moment: the next beat tries again
            try:
                self.name_starved_units()
            except Exception:
                pass  # Ray shutting down: the leases above are what must not stop

    def name_starved_units(self) -> None:
        """A unit admitted by this engine fits in what its other units leave; if a minute later its workers
        have not started and a placement group still waits, something outside this workflow holds what
        they need (another job on the cluster): say so, once, instead of a silent wait."""
        import ray
        from ray.util import placement_group_table

        display = self.context.display
        if display is None or not ray.is_initialized():
            return
        stalled = display.still_starting(STARVED_S)
        if not stalled or not any(g["state"] == "PENDING" for g in placement_group_table().values()):
            return
        free = ray.available_resources()
        for name in stalled:
            display.named(name)
            need = demand(self.states[name].unit)
            self.context.print(f"[yellow]{name}[/]: its workers still wait for {_describe(need)} after "
                               f"{STARVED_S:g} s; the cluster has {_describe({k: free.get(k, 0) for k in need})} "
                               "free, the rest held outside this workflow (`ray status` shows by what)")

    def close_orphans(self, keep: bool) -> int:
        """RUNNING runs of this spec whose driver is dead: KILLED; with `keep`, not those of this plan's units
        (by key, or by name while the key is unknown), which their units take over."""
        client = self.context.tracker.client
        keys = {u.key for u in self.units if u.key} if keep else set()
        names = {u.name for u in self.units if u.key is None} if keep else set()
        runs = client.search_runs([self.context.experiment_id],
                                  f"tags.spec = '{self.context.spec.name}' and attributes.status = 'RUNNING'")
        closed = 0
        for run in runs:
            if lease_alive(run) or run.data.tags.get(KEY_TAG) in keys or run.data.tags.get(UNIT_TAG) in names:
                continue
            if run.data.tags.get(UNIT_TAG) or run.data.tags.get("stage") == "workflow":
                client.set_terminated(run.info.run_id, "KILLED")
                closed += 1
        return closed

    # --- running ---------------------------------------------------------------------------------
    def acquire(self, unit: Unit) -> Job | None:
        """The unit's run: a new one, or the one of a dead driver taken over; None when it is cached
        (also when another live driver finished it meanwhile)."""
        tracker, context = self.context.tracker, self.context
        state = self.states[unit.name]
        while state.state == "held":  # another live driver runs it: wait for its end or its lease to lapse
            if self._stop.wait(WAIT_POLL_S):
                return None
            classify(state, find_runs(tracker, context.experiment_id, unit.key), self.forced(unit))
        if state.state == "cached":
            return None
        if not unit.cacheable:  # rebuilt every time, kept on the workflow run
            return Job(context, unit, context.parent_run_id, "", self.inputs(unit))
        title = unit.title or unit.model or unit.name
        if state.state == "resumable":
            run = state.run
            run_id = run.info.run_id
            tracker.client.update_run(run_id, status="RUNNING")
            tracker.client.set_tag(run_id, "mlflow.parentRunId", context.parent_run_id)
            self.hold(run_id, unit.name)
            train_name = run.data.tags.get(TRAIN_NAME_TAG) or f"{unit.slug}-{unit.key[:10]}-{run_id[:8]}"
            context.print(f"[yellow]{unit.name}[/] resumed in run {run_id} ({state.detail})")
            return Job(context, unit, run_id, train_name, self.inputs(unit), resumed=True)
        run_id = tracker.start_run(
            context.experiment_id, title, parent_id=context.parent_run_id,
            tags={UNIT_TAG: unit.name, KEY_TAG: unit.key, CODE_TAG: code_version(), "stage": unit.stage,
                  "spec": context.spec.name, **({"model": unit.model} if unit.model else {})})
        self.hold(run_id, unit.name)
        train_name = f"{unit.slug}-{unit.key[:10]}-{run_id[:8]}"
        tracker.client.set_tag(run_id, TRAIN_NAME_TAG, train_name)
        tracker.log_text(run_id, context.spec_yaml, "spec.yaml")
        return Job(context, unit, run_id, train_name, self.inputs(unit))

    def inputs(self, unit: Unit) -> dict[str, dict]:
        return {name: self.states[name].output for name in unit.needs}

    def work(self, unit: Unit) -> None:
        """A unit's thread: acquire its run, run it, close the run; the outcome goes to the main loop."""
        tracker = self.context.tracker
        job = None
        try:
            job = self.acquire(unit)
            if job is None:
                state = self.states[unit.name]
                self.done.put((unit.name, "cached", unit.from_run(state.run, self.context) if unit.from_run else {}, ""))
                return
            output = unit.run(job)
            if job.run_id != self.context.parent_run_id:
                tracker.finish(job.run_id, "FINISHED")
            self.done.put((unit.name, "finished", output, ""))
        except Exception as exc:  # one unit's failure never stops the others
            if isinstance(exc, (UnitFailed, PipelineError)):
                reason = str(exc)
            else:  # a bug or a library's error: its type and last line, the traceback with --verbose
                reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"
                if self.context.verbose:
                    traceback.print_exc()
            if job is not None and job.run_id != self.context.parent_run_id:
                try:
                    tracker.client.set_tag(job.run_id, "error", reason[:5000])
                    tracker.finish(job.run_id, "FAILED")
                except Exception:
                    pass
            self.done.put((unit.name, "failed", None, reason))
        finally:
            if job is not None and job.run_id != self.context.parent_run_id:
                self.release(job.run_id)

    def execute(self, total: dict[str, float]) -> None:
        """Start each unit when what it needs has ended and its workers fit in what the running units leave
        of the cluster (re-read every few seconds: nodes join, an autoscaler adds some)."""
        context = self.context
        bound = context.spec.max_concurrent_units
        refreshed = time.time()
        nodes = cluster_shape()[0] if total else []
        waiting_since: dict[str, float] = {}
        pending = [u for u in self.units]
        running: dict[str, Unit] = {}
        in_use: dict[str, float] = {}
        ended: set[str] = set()
        while pending or running:
            if total and time.time() - refreshed > 2:
                (nodes, total), refreshed = cluster_shape(), time.time()
            for unit in list(pending):
                if not all(n in ended for n in unit.needs + unit.after):
                    continue
                if failed := [n for n in unit.needs if self.states[n].state in ("failed", "skipped")]:
                    pending.remove(unit)
                    self._ended(unit, "skipped", None, f"it needs {failed[0]}, which did not finish")
                    ended.add(unit.name)
                    continue
                state = self.states[unit.name]
                if unit.key is None:
                    try:
                        self.resolve(unit, {n: self.states[n].output for n in unit.needs})
                    except Exception as exc:  # its inputs do not make a unit (an ensemble of one run, say)
                        pending.remove(unit)
                        self._ended(unit, "failed", None, str(exc))
                        ended.add(unit.name)
                        continue
                if state.state == "cached":
                    pending.remove(unit)
                    self._ended(unit, "cached", unit.from_run(state.run, self.context) if unit.from_run else {}, "")
                    ended.add(unit.name)
                    continue
                need = demand(unit)
                if need and (problem := misfit(unit, nodes, total)):  # the cluster may still grow
                    since = waiting_since.setdefault(unit.name, time.time())
                    if time.time() - since < unit.resources.max_wait_s:
                        continue
                    pending.remove(unit)
                    self._ended(unit, "failed", None, f"waited {unit.resources.max_wait_s:g} s: {problem}: "
                                                      f"{MISFIT_FIX}")
                    ended.add(unit.name)
                    continue
                busy = [u for u in running.values() if u.resources is not None]
                if need and busy:
                    if bound and len(busy) >= bound:
                        continue
                    if any(in_use.get(k, 0) + v > total.get(k, 0) + 1e-9 for k, v in need.items()):
                        continue
                pending.remove(unit)
                running[unit.name] = unit
                for k, v in need.items():
                    in_use[k] = in_use.get(k, 0) + v
                threading.Thread(target=self.work, args=(unit,), daemon=True, name=unit.name).start()
            if not running:
                if pending and not any(all(n in ended for n in u.needs + u.after) for u in pending):
                    raise RuntimeError(f"units wait on each other: {', '.join(u.name for u in pending)}")
                if pending:
                    time.sleep(0.5)  # units wait for the cluster to grow
                continue
            # A timeout keeps the main thread responsive to signals while units run.
            name, how, output, reason = self._next(timeout=1.0)
            if name is None:
                continue
            unit = running.pop(name)
            for k, v in demand(unit).items():
                in_use[k] -= v
            self._ended(unit, how, output, reason)
            ended.add(name)

    def _next(self, timeout: float):
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            return None, None, None, None

    def _ended(self, unit: Unit, how: str, output, reason: str) -> None:
        state, context = self.states[unit.name], self.context
        state.state, state.output, state.detail = how, output, reason
        if context.display:
            context.display.done(unit.name)
        if how in ("failed", "skipped"):
            context.failures.append(unit.name)
            context.failure_reasons[unit.name] = reason
            context.print(f"[bold red]{escape(unit.name)} {how}:[/] {escape(reason)}", highlight=False)
            return
        if unit.model:  # a stage of many units: its outputs by model; of one unit: the output itself
            context.outputs.setdefault(unit.stage, {})[unit.model] = output
        else:
            context.outputs[unit.stage] = output
        if how == "cached":
            self.reused.append(unit.name)
            run_id = (output or {}).get("run_id", state.run.info.run_id if state.run else "")
            context.print(f"[cyan]{unit.name}[/] cached: run {run_id} (key {unit.key[:12]})")
        self.publish()

    def publish(self) -> None:
        """The leaderboard into the experiment's and the workflow run's descriptions. Called from the main
        loop only (when a unit ends), so there is one writer and no race between units."""
        from pipeline import leaderboard

        context = self.context
        if context.parent_run_id is None:
            return
        try:
            self.board = leaderboard.publish(context.tracker.uri, context.spec.experiment_name,
                                             context.parent_run_id, context.tracker.client)
        except PipelineError:
            pass  # no result on the leaderboard yet
        except Exception as exc:  # the ranking in the UI must not stop the workflow
            context.print(f"[yellow]note:[/] leaderboard not published to MLflow: {escape(str(exc)[:200])}")

    def interrupted(self) -> list[str]:
        """Mark every run this driver holds KILLED; the names of the units that were running."""
        self._stop.set()
        with self._lock:
            held = dict(self.held)
        names = []
        client = self.context.tracker.client
        for run_id, name in held.items():
            try:
                self.context.tracker.finish(run_id, "KILLED")
                # A sweep's trials are child runs written by their trial processes, which end with this driver.
                for child in client.search_runs([self.context.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' "
                                                "and attributes.status = 'RUNNING'"):
                    client.set_tag(child.info.run_id, "end", "killed")
                    self.context.tracker.finish(child.info.run_id, "KILLED")
            except Exception:
                pass
            if name != "workflow":
                names.append(name)
        return names


def prepare(spec: Spec, console: Console | None = None, verbose: bool = False, rerun=()) -> Engine:
    """Plan the units and look up what the tracking store already has: no Ray, no data."""
    from pipeline.tracking import Tracker, check_reachable, redact, resolve_uri

    context = RunContext(spec, console=console or Console(), verbose=verbose)
    tree = spec.model_dump(mode="json")
    if tree["tracking"]["uri"]:  # a password written into the URI is not kept with the runs
        tree["tracking"]["uri"] = redact(tree["tracking"]["uri"])
    context.spec_yaml = yaml.safe_dump(tree, sort_keys=False)
    units = plan(context)
    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    context.tracker = Tracker(uri, create=False)
    if context.tracker.client is not None:  # a store that does not exist yet holds no runs: it is made later
        experiment = context.tracker.client.get_experiment_by_name(spec.experiment_name)
        context.experiment_id = experiment.experiment_id if experiment else None
    engine = Engine(context, units, rerun)
    engine.resolve_static()
    return engine


def preflight_data(context: RunContext, stages: set[str]) -> None:
    """Load the data set (or open a streamed one), and the caption set if a pretraining unit is among the
    `stages` about to run, before any run is written: a missing or corrupt file, or a wrong column, is a
    one-line error, not a failed unit."""
    from pipeline.data import dataset_info, is_streaming

    data, captions = context.spec.data, context.spec.clip.captions if context.spec.clip else None
    if captions is not None and captions.path and "clip_pretrain" in stages:
        from pipeline.data.captions import open_caption_set

        open_caption_set(captions.path, captions.split, captions.image_column, captions.text_column)
    if not is_streaming(data):
        context.splits(data)
        return
    from pipeline.data.huggingface import open_dataset

    open_dataset(data.path or dataset_info(data).hub_id, data.train_split, streaming=True)


def run(spec: Spec, console: Console | None = None, verbose: bool = False, rerun=()) -> RunContext:
    """Run a spec's workflow; returns its context (outputs per stage, failed unit names)."""
    from pipeline.progress import WorkflowDisplay
    from pipeline.tracking import Tracker, patient_writes

    engine = prepare(spec, console, verbose, rerun)
    context, tracker = engine.context, engine.context.tracker
    to_run = [u for u in engine.units if engine.states[u.name].state != "cached"]
    if any(u.uses_data for u in to_run):
        preflight_data(context, {u.stage for u in to_run})
    if any(u.stage in ("train", "sweep", "retrain") for u in to_run):
        from pipeline.model_checks import check_model_kwargs

        for entry in spec.models:  # imports torch and timm, so here rather than in the offline `validate`
            check_model_kwargs(entry.name, entry.kwargs)
    tracker = context.tracker = Tracker(tracker.uri)
    context.experiment_id = tracker.experiment_id(spec.experiment_name)
    total: dict[str, float] = {}
    if any(u.resources is not None for u in to_run):
        from pipeline.cluster import init_ray

        init_ray(verbose)
        total = check_fits(to_run, context.console)
    started = time.time()
    context.parent_run_id = tracker.start_run(
        context.experiment_id, f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={"spec": spec.name, "stages": ",".join(spec.stages)},
        tags={"spec": spec.name, "stage": "workflow", "dataset": spec.data.name, CODE_TAG: code_version()})
    engine.hold(context.parent_run_id, "workflow")
    tracker.log_text(context.parent_run_id, context.spec_yaml, "spec.yaml")
    if any(u.uses_data for u in to_run):  # the data set, in the runs table's Dataset column of the workflow run
        from pipeline.logged_models import log_spec_datasets

        log_spec_datasets(context, context.parent_run_id)
    closed = engine.close_orphans(keep=True)
    context.console.print(f"[bold]{spec.name}[/]: {len(engine.units)} unit(s), experiment '{spec.experiment_name}' "
                          f"in {tracker.display_uri} (run {context.parent_run_id})"
                          + (f"; {closed} run(s) of a dead driver marked killed" if closed else ""))
    beat = threading.Thread(target=engine.heartbeat, daemon=True)
    beat.start()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        raise Interrupted(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    status = "FAILED"
    try:
        with WorkflowDisplay(context.console) as display, patient_writes():  # an interrupt's writes: fast
            context.display = display
            engine.execute(total)
        status = "FAILED" if context.failures else "FINISHED"
    except KeyboardInterrupt as exc:
        status = "KILLED"
        names = engine.interrupted()
        what = f"unit(s) {', '.join(names)}" if names else "the workflow"
        how = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        context.console.print(f"[bold red]interrupted ({signal.Signals(how).name}):[/] stopped {what}; their runs are "
                              f"marked KILLED and their checkpoints kept. Run the same command again to resume.")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine._stop.set()
        context.display = None
        summary = {"units": len(engine.units), "units_reused": len(engine.reused),
                   "units_failed": len(context.failures), "wall_time_s": time.time() - started}
        if engine.board is not None:  # what a reader of the workflow run looks for
            sound = [r for r in engine.board.rows if not r.get("diverged")]
            summary.update({"models": len(engine.board.rows),
                            **({"best_top1_err": sound[0]["top1_err"]} if sound else {})})
        try:
            if status != "KILLED":
                engine.close_orphans(keep=False)  # what the units did not take over
            tracker.log(context.parent_run_id, summary)
            if engine.reused:
                tracker.client.set_tag(context.parent_run_id, "reused_units", ",".join(engine.reused)[:5000])
            tracker.finish(context.parent_run_id, status)
        except Exception:
            pass
    if engine.reused:
        context.console.print(f"reused {len(engine.reused)} cached unit(s): {', '.join(engine.reused)}")
    return context


def unit_table(engine: Engine) -> list[dict[str, Any]]:
    """Per unit: name, needs, key, state (with its run or reason), resources: what `pipeline status` shows."""
    rows = []
    for unit in engine.units:
        state = engine.states[unit.name]
        r = unit.resources
        resources = "driver" if r is None else \
            f"{r.num_workers * unit.parallel} x ({r.cpus_per_worker:g} CPU" + \
            (f" + {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "") + ")"
        what = state.state if unit.cacheable else "always runs"
        if state.run is not None:
            what += f" (run {state.run.info.run_id[:12]}{', ' + state.detail if state.detail else ''})"
        elif state.detail:
            what += f" ({state.detail})"
        if unit.key is None:
            what = "pending (key known once its needs have run)"
        rows.append({"unit": unit.name, "needs": ", ".join(unit.needs + unit.after) or "-",
                     "key": unit.key[:12] if unit.key else "-", "state": what, "resources": resources})
    return rows


# The stages a unit's stage needs to run again (their units are cached when they finished).
STAGE_NEEDS = {"retrain": ["sweep"], "zero_shot": ["clip_pretrain"], "ensemble": ["train"]}


def rebuild(uri: str, run_id: str, console) -> tuple[dict[str, Any], Spec, str]:
    """(the old run's result, the spec it recorded narrowed to its unit, the unit's name) for a rerun."""
    from pipeline.config import parse_spec
    from pipeline.tracking import Tracker, check_reachable

    check_reachable(uri)
    tracker = Tracker(uri)
    try:
        run = tracker.client.get_run(run_id)
    except Exception:
        raise PipelineError(f"no run '{run_id}' in {tracker.display_uri}: give the id of a unit's run "
                            "(the leaderboard's run column, or the MLflow UI)") from None
    unit = run.data.tags.get(UNIT_TAG)
    if not unit:
        raise PipelineError(f"run {run_id} is not a unit of a workflow (it has no '{UNIT_TAG}' tag): runs made "
                            "before units existed cannot be rebuilt; run their spec with --rerun instead")
    try:
        with tempfile.TemporaryDirectory() as folder:
            with open(tracker.client.download_artifacts(run_id, "spec.yaml", folder)) as handle:
                tree = yaml.safe_load(handle)
    except Exception:
        raise PipelineError(f"run {run_id} keeps no spec.yaml: it cannot be rebuilt") from None
    stage = run.data.tags.get("stage", unit.partition("/")[0])
    tree["stages"] = [*STAGE_NEEDS.get(stage, []), stage]
    tree.setdefault("tracking", {})["uri"] = uri
    model = unit.partition("/")[2].partition("#")[0]
    only = [model] if model and tree.get("models") and stage in ("train", "sweep", "retrain") else []
    spec = parse_spec(tree, f"the spec of run {run_id}", only=only)
    recorded = run.data.tags.get(CODE_TAG)
    if recorded and recorded != code_version():
        console.print(f"[yellow]note:[/] run {run_id} was made by code {recorded}; this is {code_version()}: "
                      "the new run uses this code")
    return {"run_id": run_id, "metrics": dict(run.data.metrics)}, spec, unit


def result_of(context: RunContext, unit_name: str) -> dict[str, Any]:
    stage, _, model = unit_name.partition("/")
    outputs = context.outputs.get(stage, {})
    return outputs.get(model, {}) if stage in ("train", "sweep", "retrain") else outputs


def compare_line(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Both results of a rerun side by side."""
    def error(result):
        value = (result.get("metrics") or {}).get("top1_err")
        return f"top-1 error {value:.2f}%" if value is not None else "no top-1 error"

    line = f"old run {old['run_id']}: {error(old)}; new run {new.get('run_id', '?')}: {error(new)}"
    a, b = (old.get("metrics") or {}).get("top1_err"), (new.get("metrics") or {}).get("top1_err")
    return line + (f" (difference {b - a:+.2f} points)" if a is not None and b is not None else "")
