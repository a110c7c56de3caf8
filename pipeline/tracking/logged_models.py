"""Each result as an MLflow LoggedModel of its run: weights, model.json and the pyfunc that serves it.

A LoggedModel (MLflow 3's model-centric record, listed in the experiment's Models tab) holds the weights as
a state dict that loads with `weights_only=True`, `model.json` (what rebuilds and preprocesses the network),
and a pyfunc whose code is the project's own (`pipeline/results/serving.py`, "models from code": nothing pickled).
Its params and tags say what it is; its test metrics are logged linked to the model and to the test set
(`model_id`, `dataset_name`, `dataset_digest`), so the Models tab can sort every model by `top1_err`.
The data sets a run read are its inputs: `pipeline.tracking.datasets`."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# Downloads of a model's few files need no progress bar in the commands' output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


ROOT = Path(__file__).resolve().parents[2]  # the project: its pipeline/ and models/ go with a pyfunc
SERVING_CODE = ROOT / "pipeline" / "results" / "serving.py"


MODEL_TAGS = ("model", "family", "paper_year", "dataset", "stage", "kind", "unit_key", "init", "init_model_id",
              "init_digest", "entry")


# Linked to the model and the test set (the Models tab's columns).
TEST_METRICS = ("top1", "top1_err", "top5", "top5_err", "mean_class_recall", "test_loss")


# Linked to the model and the validation set: what selection reads.
VAL_METRICS = ("val_top1_err", "best_val_top1_err", "sweep_val_top1_err")


def pip_requirements() -> list[str]:
    """What the pyfunc needs, given so that MLflow does not infer it (inference runs the model)."""
    import PIL
    import timm
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", f"pillow=={PIL.__version__}",
            "pandas", "numpy"]
from pipeline.tracking.datasets import dataset_digest, dataset_name


def log_model(tracker, run_id: str, name: str, files: dict[str, Path] | None, params: dict[str, Any],
              tags: dict[str, Any], metrics: dict[str, float], data=None, pyfunc: bool = True) -> str:
    """A LoggedModel of run `run_id`; returns its id (`models:/<id>` loads it).

    `files` are the pyfunc's artifacts (`weights` and `meta`, or an ensemble's `meta` with `weights_<i>`,
    `meta_<i>`); with `pyfunc=False` they are the model's plain files (a CLIP head, say), and None logs the
    model's record, params, tags and metrics only. `metrics`
    go to the run and the model, the test ones linked to the test split of `data`, the validation ones to
    its validation split.
    """
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, Metric
    from mlflow.models import Model

    client = tracker.client
    tags = {**tags, **({"pyfunc": "false"} if files is None or not pyfunc else {})}
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id,
        params={key: str(value)[:6000] for key, value in params.items()},
        tags={key: str(value) for key, value in tags.items() if value not in (None, "")})
    try:
        if files is not None and not pyfunc:
            with tempfile.TemporaryDirectory() as folder:
                for path in files.values():
                    shutil.copy(path, Path(folder) / Path(path).name)
                client.log_model_artifacts(model.model_id, folder)
        elif files is not None:
            pyfunc_log = logging.getLogger("mlflow.pyfunc")
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model"
                # Input: a DataFrame of image paths or bytes, which no signature describes; MLflow says so.
                pyfunc_log.setLevel(logging.ERROR)
                mlflow.pyfunc.save_model(
                    str(path), python_model=str(SERVING_CODE), artifacts={k: str(v) for k, v in files.items()},
                    # The model's code travels with it, so it loads where the project is not installed.
                    code_paths=[str(ROOT / "pipeline"), str(ROOT / "models")], pip_requirements=pip_requirements(),
                    mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id,
                                       model_id=model.model_id, model_uuid=model.model_id))
                pyfunc_log.setLevel(logging.NOTSET)
                for cache in path.rglob("__pycache__"):
                    shutil.rmtree(cache, ignore_errors=True)
                client.log_model_artifacts(model.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        now = int(time.time() * 1000)
        linked = []
        for key, value in metrics.items():
            where = {}
            if data is not None and key in TEST_METRICS:
                where = {"dataset_name": dataset_name(data, "test"), "dataset_digest": dataset_digest(data)}
            elif data is not None and key in VAL_METRICS[:2] and data.val_fraction:
                where = {"dataset_name": dataset_name(data, "val"), "dataset_digest": dataset_digest(data)}
            linked.append(Metric(key, float(value), now, 0, model_id=model.model_id, **where))
        if linked:
            client.log_batch(run_id, metrics=linked)
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model.model_id


def run_models(client, run_id: str) -> list:
    """The READY LoggedModels of a run, newest first."""
    run = client.get_run(run_id)
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}'", max_results=50)
    ready = [m for m in found if str(m.status).endswith("READY")]
    return sorted(ready, key=lambda m: m.creation_timestamp, reverse=True)


def models_by_run(client, experiment_id: str, pyfunc_only: bool = False) -> dict[str, str]:
    """Run id -> the id of its latest READY LoggedModel (with a pyfunc, if asked), for a whole experiment in
    one search."""
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    latest: dict[str, Any] = {}
    for model in sorted(found, key=lambda m: m.creation_timestamp):  # the latest of a run wins
        if str(model.status).endswith("READY") and model.source_run_id and \
                not (pyfunc_only and model.tags.get("pyfunc") == "false"):
            latest[model.source_run_id] = model
    return {run_id: model.model_id for run_id, model in latest.items()}


def model_of_run(client, run_id: str) -> str | None:
    """The id of a run's (latest) LoggedModel with a pyfunc, or None."""
    for model in run_models(client, run_id):
        if model.tags.get("pyfunc") != "false":
            return model.model_id
    return None


def classifier_files(folder: Path, state_dict, meta: dict) -> dict[str, Path]:
    """A network's pyfunc artifacts: its state dict and model.json, written into `folder`."""
    import torch

    torch.save(state_dict, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return {"weights": folder / "model.pt", "meta": folder / "model.json"}
