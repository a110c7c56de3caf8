"""`pipeline rerun RUN_ID`: rebuild one unit's run from the spec it recorded, and compare."""
from __future__ import annotations

import tempfile
from typing import Any

import yaml

from pipeline.engine import registry
from pipeline.engine.context import RunContext
from pipeline.errors import PipelineError
from pipeline.spec.schema import Spec
from pipeline.tracking.tags import CODE_TAG, UNIT_TAG


def rebuild(uri: str, run_id: str, console) -> tuple[dict[str, Any], Spec, str]:
    """(the old run's result, the spec it recorded narrowed to its unit, the unit's name) for a rerun."""
    from pipeline.spec.loading import parse_spec
    from pipeline.tracking.store import Tracker, check_reachable

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
    stage = registry.load(run.data.tags.get("stage", unit.partition("/")[0]))
    # The stages it follows run too (their units are cached when they finished), as far as the spec had them.
    tree["stages"] = [s for s in tree.get("stages", []) if s in stage.after] + [stage.name]
    tree.setdefault("tracking", {})["uri"] = uri
    model = unit.partition("/")[2].partition("#")[0].partition("@")[0]
    only = _with_sources(tree, model) if model and tree.get("models") and stage.per_model else []
    spec = parse_spec(tree, f"the spec of run {run_id}", only=only)
    recorded = run.data.tags.get(CODE_TAG)
    planned = next((u for u in registry.plan(RunContext(spec)) if u.name == unit), None)
    if recorded and planned is not None and recorded != planned.code_version:
        console.print(f"[yellow]note:[/] run {run_id} was made by code {recorded}; this is {planned.code_version}: "
                      "the new run uses this code")
    return {"run_id": run_id, "metrics": dict(run.data.metrics)}, spec, unit


def result_of(context: RunContext, unit_name: str) -> dict[str, Any]:
    stage, _, model = unit_name.partition("/")
    outputs = context.outputs.get(stage, {})
    return outputs.get(model, {}) if registry.load(stage).per_model else outputs


def compare_line(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Both results of a rerun side by side."""
    def error(result):
        value = (result.get("metrics") or {}).get("top1_err")
        return f"top-1 error {value:.2f}%" if value is not None else "no top-1 error"

    line = f"old run {old['run_id']}: {error(old)}; new run {new.get('run_id', '?')}: {error(new)}"
    a, b = (old.get("metrics") or {}).get("top1_err"), (new.get("metrics") or {}).get("top1_err")
    return line + (f" (difference {b - a:+.2f} points)" if a is not None and b is not None else "")


def _with_sources(tree: dict, model: str) -> list[str]:
    """The entry (a model name or an id) and the entries whose units it starts from (`init: unit:train/NAME`)."""
    only, entries = [model], [e for e in tree["models"] if isinstance(e, dict)]
    for name in only:
        for entry in entries:
            init = str(entry.get("init", ""))
            if name in (entry.get("id"), entry.get("name")) and init.startswith("unit:train/"):
                source = init[len("unit:train/"):].partition("#")[0].partition("@")[0]
                if source not in only:
                    only.append(source)
    return only

