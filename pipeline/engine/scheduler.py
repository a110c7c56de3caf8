"""The engine's scheduler: units start when what they need has ended and their workers fit."""
from __future__ import annotations

import queue
import random
import threading
import time
import traceback

from rich.markup import escape

from pipeline.engine.context import Job, RunContext
from pipeline.engine.resources import (
    MISFIT_FIX,
    _describe,
    cluster_shape,
    demand,
    misfit,
)
from pipeline.engine.states import (
    CLAIM_PREFIX,
    HEARTBEAT_S,
    LEASE_S,
    STARVED_S,
    WAIT_POLL_S,
    UnitState,
    claim_alive,
    classify,
    lease_alive,
    matches,
    this_owner,
    unit_runs,
)
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError, UnitFailed
from pipeline.tracking.queries import find_runs, kill_runs
from pipeline.tracking.tags import (
    CODE_TAG,
    KEY_TAG,
    LEASE_EXPIRES_TAG,
    LEASE_OWNER_TAG,
    TRAIN_NAME_TAG,
    UNIT_TAG,
)


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
            classify(state, unit_runs(self.context.tracker, self.context.experiment_id, unit.key), self.forced(unit))
        return state

    def resolve_static(self) -> None:
        """Keys and cache states of the units whose identity is known before anything runs."""
        for unit in self.units:
            if unit.identify is None or not (unit.needs or unit.after):
                self.resolve(unit, {})

    # --- leases ----------------------------------------------------------------------------------
    def hold(self, run_id: str, name: str) -> None:
        for key, value in self.lease_tags().items():
            self.context.tracker.client.set_tag(run_id, key, value)
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
        runs = find_runs(client, self.context.experiment_id, {"spec": self.context.spec.name}, "RUNNING")
        return kill_runs(client, [
            run for run in runs
            if not (lease_alive(run) or run.data.tags.get(KEY_TAG) in keys or run.data.tags.get(UNIT_TAG) in names)
            and (run.data.tags.get(UNIT_TAG) or run.data.tags.get("stage") == "workflow")])

    # --- running ---------------------------------------------------------------------------------
    def acquire(self, unit: Unit) -> Job | None:
        """The unit's run, claimed for this driver: a new one, or the one of a dead driver taken over; None
        when it is cached (also when another driver finished it meanwhile). Its key's runs are read again
        here, at claim time, not only when the workflow started (see `claim_new`)."""
        tracker, context = self.context.tracker, self.context
        state = self.states[unit.name]
        if not unit.cacheable:  # rebuilt every time, kept on the workflow run
            return Job(context, unit, context.parent_run_id, "", self.inputs(unit))
        while not self._stop.is_set():
            classify(state, unit_runs(tracker, context.experiment_id, unit.key), self.forced(unit))
            if state.state == "held":  # another live driver runs it: wait for its end or its lease to lapse
                self._stop.wait(WAIT_POLL_S)
                continue
            if state.state == "cached":
                return None
            job = self.claim_resumable(unit, state) if state.state == "resumable" else self.claim_new(unit)
            if job is not None:
                return job
            self._stop.wait(random.uniform(0.5, 2.0))  # another driver claimed it at the same moment: look again
        return None

    def lease_tags(self) -> dict[str, str]:
        return {LEASE_OWNER_TAG: self.owner, LEASE_EXPIRES_TAG: f"{time.time() + LEASE_S:.0f}"}

    def claim_new(self, unit: Unit) -> Job | None:
        """Start the unit's run, leased to this driver, then read its key's runs: if another live driver's
        run (or a finished one) is there too, this claim is withdrawn (the run deleted) and None returned.

        MLflow has no transactions, so the claim is write-then-read: a driver proceeds only if, after its
        own write, it sees no rival. Two drivers cannot both proceed: each would have read before the other
        wrote, and each writes before it reads. This holds on any store whose writes are visible to every
        later search once acknowledged (SQLite, a tracking server on one database). Both may withdraw at
        once; they look again after a random pause."""
        tracker, context = self.context.tracker, self.context
        run_id = tracker.start_run(
            context.experiment_id, unit.title or unit.model or unit.name, parent_id=context.parent_run_id,
            tags={UNIT_TAG: unit.name, KEY_TAG: unit.key, CODE_TAG: unit.code_version, "stage": unit.stage,
                  "spec": context.spec.name, **({"model": unit.model} if unit.model else {}), **unit.tags,
                  **self.lease_tags()})
        rivals = [r for r in unit_runs(tracker, context.experiment_id, unit.key) if r.info.run_id != run_id and (
            (r.info.status == "RUNNING" and lease_alive(r)) or (r.info.status == "FINISHED" and not self.forced(unit)))]
        if rivals:
            tracker.client.delete_run(run_id)
            return None
        self.hold(run_id, unit.name)
        train_name = f"{unit.slug}-{unit.key[:10]}-{run_id[:8]}"
        tracker.client.set_tag(run_id, TRAIN_NAME_TAG, train_name)
        tracker.log_text(run_id, context.spec_yaml, "spec.yaml")
        return Job(context, unit, run_id, train_name, self.inputs(unit))

    def claim_resumable(self, unit: Unit, state: UnitState) -> Job | None:
        """Take over the run of a dead driver, by the same write-then-read rule: a claim tag of this driver
        on the run, then the run read again; another live claim there withdraws this one."""
        tracker, context = self.context.tracker, self.context
        run_id = state.run.info.run_id
        mine = f"{CLAIM_PREFIX}{self.owner.rpartition(':')[2]}"
        tracker.client.set_tag(run_id, mine, f"{self.owner}|{time.time() + LEASE_S:.0f}")
        tags = tracker.client.get_run(run_id).data.tags
        rivals = [key for key, value in tags.items() if key.startswith(CLAIM_PREFIX) and key != mine
                  and claim_alive(value)]
        if rivals or (tags.get(LEASE_OWNER_TAG) != state.run.data.tags.get(LEASE_OWNER_TAG)):
            tracker.client.delete_tag(run_id, mine)  # withdrawn; or another driver already took the run over
            return None
        tracker.client.update_run(run_id, status="RUNNING")
        tracker.client.set_tag(run_id, "mlflow.parentRunId", context.parent_run_id)
        self.hold(run_id, unit.name)
        tracker.client.delete_tag(run_id, mine)  # the lease now says who holds it
        train_name = state.run.data.tags.get(TRAIN_NAME_TAG) or f"{unit.slug}-{unit.key[:10]}-{run_id[:8]}"
        context.print(f"[yellow]{unit.name}[/] resumed in run {run_id} ({state.detail})")
        return Job(context, unit, run_id, train_name, self.inputs(unit), resumed=True)

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
        from pipeline.results import publish

        context = self.context
        if context.parent_run_id is None:
            return
        try:
            self.board = publish.publish_leaderboard(context.tracker.uri, context.spec.experiment_name,
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
                kill_runs(client, find_runs(client, self.context.experiment_id, {"mlflow.parentRunId": run_id},
                                            "RUNNING"))
            except Exception:
                pass
            if name != "workflow":
                names.append(name)
        return names
