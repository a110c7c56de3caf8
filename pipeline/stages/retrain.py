"""The `retrain` stage: each model's best sweep config, trained again on train + validation with more
epochs and evaluated on the test set, the only time a sweep's model sees it. Its runs (stage `retrain`,
tag `sweep_run_id`) compete on the leaderboard."""
from __future__ import annotations

from dataclasses import replace

from pipeline.workflow import RunContext, stage


@stage("retrain")
def retrain_stage(context: RunContext) -> None:
    from pipeline.config import Spec
    from pipeline.data import is_streaming, load_splits
    from pipeline.stages.train import train_stage

    spec, tracker = context.spec, context.tracker
    swept = context.outputs.get("sweep", {})
    # The validation split goes back into training: selection is over.
    data_config = spec.data.model_copy(update={"val_fraction": 0.0})
    data = None if is_streaming(data_config) else load_splits(data_config)
    for entry in spec.models:
        if entry.name not in swept:
            continue  # its sweep failed; the workflow already counts it
        best = dict(swept[entry.name]["best_config"])
        best["epochs"] = spec.sweep.retrain_epochs or 2 * best["epochs"]
        tree = spec.model_dump(mode="json")
        tree.update(models=[{"name": entry.name, "kwargs": entry.kwargs, "train": best}],
                    data=data_config.model_dump(mode="json"), stages=["train"])
        single = Spec.model_validate(tree)
        context.console.print(f"[bold]{entry.name}[/]: retraining the best config for {best['epochs']} epochs "
                              "on train + validation")
        # The train stage does the work; its run is then marked as this stage's.
        sub = replace(context, spec=single, data=data, outputs={}, failures=[])
        train_stage(sub)
        context.failures.extend(sub.failures)
        if entry.name not in sub.outputs.get("train", {}):
            continue
        run_id = sub.outputs["train"][entry.name]["run_id"]
        for key, value in {"stage": "retrain", "sweep_run_id": swept[entry.name]["run_id"],
                           "sweep_key": swept[entry.name]["sweep_key"]}.items():
            tracker.client.set_tag(run_id, key, value)
        tracker.client.set_tag(swept[entry.name]["run_id"], "retrain_run_id", run_id)
        context.outputs.setdefault("retrain", {})[entry.name] = sub.outputs["train"][entry.name]
