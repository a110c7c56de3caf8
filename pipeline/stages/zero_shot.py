"""The `zero_shot` stage: a CLIP model classifies the test set from class names and evaluation
templates alone (a leaderboard row marked zero-shot), beside a linear probe on the same frozen features."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from pipeline.clip import CLIP_CODE
from pipeline.data.fingerprint import data_fingerprint
from pipeline.engine.context import Job, RunContext
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError
from pipeline.tracking.queries import find_runs

PRETRAIN_STAGE = "clip_pretrain"  # the stage whose model it evaluates by default

# The model is a few MB: MLflow's download progress bar would only clutter the stage's output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def latest_pretrain_run(tracker, experiment_id: str, experiment: str) -> str:
    """The run id of the experiment's latest finished clip_pretrain run that saved its model."""
    for run in find_runs(tracker.client, experiment_id, {"stage": PRETRAIN_STAGE}, "FINISHED", max_results=20):
        if any(a.path == "model/model.pt" for a in tracker.client.list_artifacts(run.info.run_id, "model")):
            return run.info.run_id
    raise PipelineError(f"experiment '{experiment}' has no finished {PRETRAIN_STAGE} run with a saved model: "
                        f"list stage {PRETRAIN_STAGE} before zero_shot, or set clip.zero_shot.model to an "
                        f"open_clip model name")


def source(context: RunContext, inputs: dict[str, Any]) -> tuple[str | None, str]:
    """(pretrain run id or None, display name) of the model to evaluate."""
    zero_shot = context.spec.clip.zero_shot
    if zero_shot.model != "pretrain":
        return None, f"{zero_shot.model}.{zero_shot.pretrained}" if zero_shot.pretrained else zero_shot.model
    if inputs:
        return next(iter(inputs.values()))["run_id"], context.spec.clip.model
    return latest_pretrain_run(context.tracker, context.experiment_id, context.spec.experiment_name), \
        context.spec.clip.model


def load_model(context: RunContext, run_id: str | None, folder: str):
    """(model, tokenizer, ImageInput, display name, tags) of the model the spec asks for."""
    from models.clip import create_model
    from pipeline.clip.data import ImageInput
    from pipeline.clip.evaluation import load_trained

    zero_shot = context.spec.clip.zero_shot
    if run_id is None:
        model, tokenizer = create_model(zero_shot.model, zero_shot.pretrained)
        name = f"{zero_shot.model}.{zero_shot.pretrained}" if zero_shot.pretrained else zero_shot.model
        return model, tokenizer, ImageInput.of_model(model), name, {}
    directory = context.tracker.client.download_artifacts(run_id, "model", folder)
    model, tokenizer, image_input, meta = load_trained(directory)
    return model, tokenizer, image_input, meta["model"], {"pretrain_run_id": run_id}


def finished_zero_shot(run, context: RunContext) -> dict[str, Any]:
    output = {"run_id": run.info.run_id, "zero_shot": {"run_id": run.info.run_id, "metrics": dict(run.data.metrics)}}
    probes = find_runs(context.tracker.client, context.experiment_id, {"probe_of": run.info.run_id})
    if probes:
        output["linear_probe"] = {"run_id": probes[0].info.run_id, "metrics": dict(probes[0].data.metrics)}
    return output


@stage("zero_shot", after=PRETRAIN_STAGE)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    """One unit: the CLIP model of this spec's clip_pretrain unit, of the experiment's latest finished
    pretraining in MLflow (looked up when the run starts, before anything trains), or a named model."""
    spec = context.spec
    needs = [u.name for u in planned if u.stage == PRETRAIN_STAGE] if spec.clip.zero_shot.model == "pretrain" else []
    _, templates = spec.clip.captions.templates()

    def identify(outputs):
        run_id, name = source(context, outputs)
        return {"source": run_id or name, "zero_shot": spec.clip.zero_shot.model_dump(mode="json"),
                "templates": templates, "data": data_fingerprint(spec.data)}

    name = spec.clip.model if spec.clip.zero_shot.model == "pretrain" else spec.clip.zero_shot.model
    return [Unit(name=f"zero_shot/{name}", stage="zero_shot",
                 code=(*CLIP_CODE, "pipeline/stages/zero_shot.py"), title=f"{name} (zero-shot)", needs=needs,
                 identify=identify, uses_data=True, from_run=finished_zero_shot, run=run_unit)]


def log_head(job: Job, run_id: str, name: str, stage: str, state_dict: dict, meta: dict, metrics: dict,
             params: dict) -> str:
    """A CLIP evaluation's result as a LoggedModel of its run: the head on the frozen CLIP model (zero-shot
    class embeddings, or the linear probe's layer) as a state dict, and model.json naming the CLIP model it
    sits on; its test metrics linked to it (no pyfunc: the CLIP model is the pretrain run's or open_clip's)."""
    import json

    import torch

    from pipeline.tracking.logged_models import log_model

    with tempfile.TemporaryDirectory() as folder:
        torch.save(state_dict, os.path.join(folder, "head.pt"))
        with open(os.path.join(folder, "model.json"), "w") as handle:
            json.dump(meta, handle, indent=2)
        tags = {"model": name, "family": "CLIP", "dataset": job.spec.data.name, "stage": stage, "kind": stage,
                "unit_key": job.unit.key or ""}
        return log_model(job.tracker, run_id, name, {"head": os.path.join(folder, "head.pt"),
                                                     "meta": os.path.join(folder, "model.json")},
                         {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}, tags,
                         metrics, job.spec.data, pyfunc=False)


def run_unit(job: Job) -> dict[str, Any]:
    import torch

    from pipeline.clip.evaluation import (
        classification_metrics,
        encode_images,
        linear_probe,
        zero_shot_classifier,
    )

    context, spec, tracker, data = job.context, job.spec, job.tracker, job.context.data
    zero_shot = spec.clip.zero_shot
    if data is None:
        raise PipelineError("zero-shot evaluation needs an in-memory test set: set data.streaming: false")
    _, templates = spec.clip.captions.templates()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_id, _ = source(context, job.inputs)
    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer, image_input, name, tags = load_model(context, run_id, folder)
    model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    common_tags = {"dataset": spec.data.name, "spec": spec.name, **tags}
    common_params = {"model": name, "eval_templates": templates, "classes": data.classes}

    weights = zero_shot_classifier(model, tokenizer, data.classes, templates, device)
    test_features = encode_images(model, data.test.images, image_input, device)
    test_labels = data.test.labels.to(device)
    metrics = classification_metrics(test_features @ weights, test_labels)
    tracker.log(job.run_id, {"param_count": params}, params=common_params)
    for key, value in {"model": f"{name} (zero-shot)", **common_tags}.items():
        tracker.client.set_tag(job.run_id, key, value)
    log_head(job, job.run_id, f"{name} (zero-shot)", "zero_shot", {"weight": weights.detach().cpu()},
             {"kind": "zero_shot", "clip_model": name, "source": run_id or name, "classes": data.classes,
              "templates": templates, "head": "class embeddings (features x classes): logits = features @ weight"},
             metrics, common_params)
    context.print(f"[bold green]{name} zero-shot[/] ({len(templates)} evaluation templates): top-1 "
                  f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% mean class recall "
                  f"{metrics['mean_class_recall']:.2f}%")
    results = {"run_id": job.run_id, "zero_shot": {"run_id": job.run_id, "metrics": metrics}}
    if not zero_shot.linear_probe:
        return results

    train_images = data.train.images[:zero_shot.probe_train_images]
    train_features = encode_images(model, train_images, image_input, device)
    probe = linear_probe(train_features.cpu(), data.train.labels[:len(train_images)], len(data.classes),
                         zero_shot.probe_steps, zero_shot.probe_lr).to(device)
    with torch.no_grad():
        probe_metrics = classification_metrics(probe(test_features), test_labels)
    # The probe's row is a run of its own (tag probe_of), part of this unit.
    probe_run = tracker.start_run(
        context.experiment_id, f"{name} (linear probe)", parent_id=context.parent_run_id,
        params={**common_params, "probe_train_images": len(train_images), "probe_steps": zero_shot.probe_steps,
                "probe_lr": zero_shot.probe_lr},
        tags={"model": f"{name} (linear probe)", "stage": "linear_probe", "probe_of": job.run_id, **common_tags},
        metrics={"param_count": params})
    log_head(job, probe_run, f"{name} (linear probe)", "linear_probe", probe.cpu().state_dict(),
             {"kind": "linear_probe", "clip_model": name, "source": run_id or name, "classes": data.classes,
              "head": "nn.Linear on the frozen image features"}, probe_metrics, common_params)
    tracker.finish(probe_run)
    context.print(f"[bold green]{name} linear probe[/] ({len(train_images):,} training images, frozen "
                  f"features): top-1 {probe_metrics['top1']:.2f}% top-5 {probe_metrics['top5']:.2f}%")
    results["linear_probe"] = {"run_id": probe_run, "metrics": probe_metrics}
    return results
