"""The `retrain` stage: a unit per swept model, started as soon as that model's sweep ends. Its best config
is trained again on train + validation with more epochs and evaluated on the test set, the only time a
sweep's model sees it. Its runs (stage `retrain`, tag `sweep_run_id`) compete on the leaderboard; ensembles
and the champion select them by their sweep's best validation error (`sweep_val_top1_err`)."""
from __future__ import annotations

from typing import Any

from pipeline.engine.context import Job, RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.spec.sections import TrainConfig
from pipeline.training.model_checks import check_models
from pipeline.training.recipe import training_code, training_identity
from pipeline.training.unit import finished_output, run_training


def retrain_config(spec, outputs: dict[str, Any]) -> TrainConfig:
    best = dict(outputs["best_config"])
    best["epochs"] = spec.sweep.retrain_epochs or 2 * best["epochs"]
    return TrainConfig.model_validate(best)


@stage("retrain", after="sweep", per_model=True, preflight=check_models)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    spec = context.spec
    # The validation split goes back into training: selection is over.
    data = spec.data.model_copy(update={"val_fraction": 0.0})
    units = []
    for name, entry in spec.named_entries():
        if not spec.swept(entry):
            continue
        sweep = f"sweep/{name}"

        def identify(outputs, entry=entry, sweep=sweep):
            return {"sweep_key": outputs[sweep]["sweep_key"],
                    **training_identity(spec, entry, retrain_config(spec, outputs[sweep]), data)}

        def run(job: Job, entry=entry, sweep=sweep) -> dict[str, Any]:
            swept = job.inputs[sweep]
            train = retrain_config(spec, swept)
            job.context.print(f"[bold]{job.unit.name}[/]: retraining the best config for {train.epochs} epochs "
                              "on train + validation")
            for key, value in {"sweep_run_id": swept["run_id"], "sweep_key": swept["sweep_key"]}.items():
                job.tracker.client.set_tag(job.run_id, key, value)
            # No validation split here: the model is selected by its sweep's best validation error.
            sweep_metrics = job.tracker.client.get_run(swept["run_id"]).data.metrics
            selection = {"sweep_val_top1_err": sweep_metrics["best_val_top1_err"]} \
                if "best_val_top1_err" in sweep_metrics else {}
            output = run_training(job, entry, train, data, selection)
            job.tracker.client.set_tag(swept["run_id"], "retrain_run_id", job.run_id)
            return output

        units.append(Unit(name=f"retrain/{name}", stage="retrain", model=name, needs=[sweep], identify=identify,
                          code=training_code(entry.name, "pipeline/stages/retrain.py"),
                          resources=spec.resources_for(entry), uses_data=True, from_run=finished_output, run=run))
    return units
