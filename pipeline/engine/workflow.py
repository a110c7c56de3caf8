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
(`ray_train_name`) inside that run."""
from __future__ import annotations

import threading
import time
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from pipeline.engine import registry
from pipeline.engine.context import RunContext
from pipeline.engine.resources import check_fits
from pipeline.engine.scheduler import Engine
from pipeline.engine.signals import interrupt_line, raising_interrupted
from pipeline.engine.states import matches
from pipeline.errors import PipelineError
from pipeline.spec.schema import Spec


def prepare(spec: Spec, console: Console | None = None, verbose: bool = False, rerun=()) -> Engine:
    """Plan the units and look up what the tracking store already has: no Ray, no data."""
    from pipeline.tracking.store import Tracker, check_reachable, redact, resolve_uri

    context = RunContext(spec, console=console or Console(), verbose=verbose)
    tree = spec.model_dump(mode="json")
    if tree["tracking"]["uri"]:  # a password written into the URI is not kept with the runs
        tree["tracking"]["uri"] = redact(tree["tracking"]["uri"])
    context.spec_yaml = yaml.safe_dump(tree, sort_keys=False)
    units = registry.plan(context)
    for pattern in rerun:
        if not any(matches(unit, [pattern]) for unit in units):
            raise PipelineError(f"--rerun '{pattern}' matches no unit of the spec; its units: "
                                f"{', '.join(u.name for u in units)} (or 'all')")
    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    context.tracker = Tracker(uri, create=False)
    if context.tracker.client is not None:  # a store that does not exist yet holds no runs: it is made later
        experiment = context.tracker.client.get_experiment_by_name(spec.experiment_name)
        context.experiment_id = experiment.experiment_id if experiment else None
    engine = Engine(context, units, rerun)
    engine.resolve_static()
    return engine


def preflight_data(context: RunContext) -> None:
    """Load the data set (or open a streamed one) before any run is written: a missing or corrupt file, or a
    wrong column, is a one-line error, not a failed unit."""
    from pipeline.data import dataset_info, is_streaming

    spec = context.spec
    configs = [spec.data] + [spec.data_config(entry) for entry in spec.models if entry.data] + \
        ([spec.clip_data()] if spec.clip is not None else [])  # loaded once per distinct config (RunContext.splits)
    for data in configs:  # a model's own data (a subset of the classes, labels per class), the CLIP pretraining's
        if not is_streaming(data):
            context.splits(data)
            continue
        from pipeline.data.huggingface import open_dataset

        open_dataset(data.path or dataset_info(data).hub_id, data.train_split, streaming=True)


def run(spec: Spec, console: Console | None = None, verbose: bool = False, rerun=()) -> RunContext:
    """Run a spec's workflow; returns its context (outputs per stage, failed unit names)."""
    from pipeline.engine.progress import WorkflowDisplay
    from pipeline.tracking.store import Tracker, patient_writes

    engine = prepare(spec, console, verbose, rerun)
    context, tracker = engine.context, engine.context.tracker
    to_run = [u for u in engine.units if engine.states[u.name].state != "cached"]
    if any(u.uses_data for u in to_run):
        preflight_data(context)
    registry.preflight(context, to_run)
    tracker = context.tracker = Tracker(tracker.uri)
    context.experiment_id = tracker.experiment_id(spec.experiment_name)
    total: dict[str, float] = {}
    if any(u.resources is not None for u in to_run):
        from pipeline.engine.cluster import init_ray

        init_ray(verbose, announce=context.console.print)
        total = check_fits(to_run, context.console)
    started = time.time()
    context.parent_run_id = tracker.start_run(
        context.experiment_id, f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={"spec": spec.name, "stages": ",".join(spec.stages)},
        tags={"spec": spec.name, "stage": "workflow", "dataset": spec.data.name,
              # The spec's description: a tag of its own, and the run's Description until the leaderboard is
              # published into it (pipeline/results/publish.py).
              **({"description": spec.description, "mlflow.note.content": spec.description}
                 if spec.description else {})})
    engine.hold(context.parent_run_id, "workflow")
    tracker.log_text(context.parent_run_id, context.spec_yaml, "spec.yaml")
    if any(u.uses_data for u in to_run):  # the data set, in the runs table's Dataset column of the workflow run
        from pipeline.tracking.datasets import log_spec_datasets

        log_spec_datasets(context, context.parent_run_id)
    closed = engine.close_orphans(keep=True)
    about = f" ({escape(spec.description.strip().splitlines()[0])})" if spec.description.strip() else ""
    context.console.print(f"[bold]{spec.name}[/]{about}: {len(engine.units)} unit(s), experiment '{spec.experiment_name}' "
                          f"in {tracker.display_uri} (run {context.parent_run_id})"
                          + (f"; {closed} run(s) of a dead driver marked killed" if closed else ""))
    beat = threading.Thread(target=engine.heartbeat, daemon=True)
    beat.start()
    status = "FAILED"
    try:
        with raising_interrupted(), WorkflowDisplay(context.console) as display, \
                patient_writes():  # an interrupt's writes fail fast
            context.display = display
            engine.execute(total)
        status = "FAILED" if context.failures else "FINISHED"
    except KeyboardInterrupt as exc:
        status = "KILLED"
        stopped = engine.interrupted()
        forced = [name for name in stopped if name in engine.states and engine.forced(engine.states[name].unit)]
        context.console.print(interrupt_line(exc, stopped, forced))
        raise
    finally:
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


def resolve_through_cache(engine: Engine) -> None:
    """For `pipeline status`: the keys, and so the states, of units whose needs are all cached, from those runs'
    outputs, as a run resolves them (a fine-tuned unit's weights digest, a retrain's best config); a unit whose
    needs must still run stays pending."""
    outputs: dict[str, dict] = {}
    for unit in engine.units:  # planned after the units they need
        state = engine.states[unit.name]
        if unit.key is None and unit.needs and not unit.after and all(n in outputs for n in unit.needs):
            try:
                engine.resolve(unit, {n: outputs[n] for n in unit.needs})
            except PipelineError:  # what the run would fail on: the unit stays pending, the run says why
                continue
        if unit.key is not None and state.state == "cached" and unit.from_run is not None:
            outputs[unit.name] = unit.from_run(state.run, engine.context)


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
