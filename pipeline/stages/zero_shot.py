"""The `zero_shot` stage: a CLIP model classifies the test set from class names and evaluation
templates alone (a leaderboard row marked zero-shot), beside a linear probe on the same frozen features."""
from __future__ import annotations

import os
import tempfile

from pipeline.errors import PipelineError
from pipeline.stages.clip_pretrain import STAGE as PRETRAIN_STAGE
from pipeline.workflow import RunContext, stage

# The model is a few MB: MLflow's download progress bar would only clutter the stage's output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def latest_pretrain_run(tracker, experiment_id: str, experiment: str) -> str:
    """The run id of the experiment's latest finished clip_pretrain run that saved its model."""
    runs = tracker.client.search_runs(
        [experiment_id], f"tags.stage = '{PRETRAIN_STAGE}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if any(a.path == "model/model.pt" for a in tracker.client.list_artifacts(run.info.run_id, "model")):
            return run.info.run_id
    raise PipelineError(f"experiment '{experiment}' has no finished {PRETRAIN_STAGE} run with a saved model: "
                        f"list stage {PRETRAIN_STAGE} before zero_shot, or set clip.zero_shot.model to an "
                        f"open_clip model name")


def load_model(context: RunContext, folder: str):
    """(model, tokenizer, ImageInput, display name, tags) of the model the spec asks for."""
    from pipeline.clip import ImageInput, create_model, load_trained

    zero_shot = context.spec.clip.zero_shot
    if zero_shot.model != "pretrain":
        model, tokenizer = create_model(zero_shot.model, zero_shot.pretrained)
        name = f"{zero_shot.model}.{zero_shot.pretrained}" if zero_shot.pretrained else zero_shot.model
        return model, tokenizer, ImageInput.of_model(model), name, {}
    pretrain = context.outputs.get(PRETRAIN_STAGE, {})
    if not pretrain and PRETRAIN_STAGE in context.spec.stages:
        raise PipelineError(f"stage {PRETRAIN_STAGE} of this run left no model to evaluate (see its run's "
                            f"'error' tag in MLflow)")
    run_id = pretrain.get("run_id") or latest_pretrain_run(context.tracker, context.experiment_id,
                                                           context.spec.experiment_name)
    directory = context.tracker.client.download_artifacts(run_id, "model", folder)
    model, tokenizer, image_input, meta = load_trained(directory)
    return model, tokenizer, image_input, meta["model"], {"pretrain_run_id": run_id}


@stage("zero_shot")
def zero_shot_stage(context: RunContext) -> None:
    import torch

    from pipeline.clip import classification_metrics, encode_images, linear_probe, zero_shot_classifier

    spec, tracker, data = context.spec, context.tracker, context.data
    zero_shot = spec.clip.zero_shot
    if data is None:
        raise PipelineError("zero-shot evaluation needs an in-memory test set: set data.streaming: false")
    _, templates = spec.clip.captions.templates()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer, image_input, name, tags = load_model(context, folder)
    model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    common_tags = {"dataset": spec.data.name, "spec": spec.name, **tags}
    common_params = {"model": name, "eval_templates": templates, "classes": data.classes}

    weights = zero_shot_classifier(model, tokenizer, data.classes, templates, device)
    test_features = encode_images(model, data.test.images, image_input, device)
    test_labels = data.test.labels.to(device)
    metrics = classification_metrics(test_features @ weights, test_labels)
    run_id = tracker.start_run(context.experiment_id, f"{name} (zero-shot)", parent_id=context.parent_run_id,
                               params=common_params, tags={"model": f"{name} (zero-shot)", "stage": "zero_shot",
                                                           **common_tags},
                               metrics={**metrics, "param_count": params})
    tracker.finish(run_id)
    context.console.print(f"[bold green]{name} zero-shot[/] ({len(templates)} evaluation templates): top-1 "
                          f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% mean class recall "
                          f"{metrics['mean_class_recall']:.2f}%")
    results = context.outputs.setdefault("zero_shot", {})
    results["zero_shot"] = {"run_id": run_id, "metrics": metrics}
    if not zero_shot.linear_probe:
        return

    train_images = data.train.images[:zero_shot.probe_train_images]
    train_features = encode_images(model, train_images, image_input, device)
    probe = linear_probe(train_features.cpu(), data.train.labels[:len(train_images)], len(data.classes),
                         zero_shot.probe_steps, zero_shot.probe_lr).to(device)
    with torch.no_grad():
        probe_metrics = classification_metrics(probe(test_features), test_labels)
    run_id = tracker.start_run(
        context.experiment_id, f"{name} (linear probe)", parent_id=context.parent_run_id,
        params={**common_params, "probe_train_images": len(train_images), "probe_steps": zero_shot.probe_steps,
                "probe_lr": zero_shot.probe_lr},
        tags={"model": f"{name} (linear probe)", "stage": "linear_probe", **common_tags},
        metrics={**probe_metrics, "param_count": params})
    tracker.finish(run_id)
    context.console.print(f"[bold green]{name} linear probe[/] ({len(train_images):,} training images, frozen "
                          f"features): top-1 {probe_metrics['top1']:.2f}% top-5 {probe_metrics['top5']:.2f}%")
    results["linear_probe"] = {"run_id": run_id, "metrics": probe_metrics}
