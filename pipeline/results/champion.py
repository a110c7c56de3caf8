"""The best model on validation in the MLflow Model Registry (alias `champion`), and inference on image files.

Every trained network is already a LoggedModel of its run (`pipeline.tracking.logged_models`): a pyfunc whose code is
the project's (`pipeline/results/serving.py`), its weights a state dict and `model.json` its preprocessing. Registering
the champion makes a version of that same model (no copy, nothing re-logged), so
`mlflow.pyfunc.load_model("models:/NAME@champion")` and `models:/m-<id>` load the same thing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

ALIAS = "champion"


def champion_row(tracking_uri: str, experiment: str) -> dict:
    """The run of one trained network with the lowest validation error that has a LoggedModel (ensembles,
    references and diverged runs are not candidates; the test error plays no part)."""
    from mlflow import MlflowClient

    from pipeline.results import leaderboard
    from pipeline.tracking.logged_models import model_of_run

    board = leaderboard.build(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    ranked, _ = leaderboard.by_validation(board)
    for row in ranked:
        if (model_id := model_of_run(client, row["run_id"])) is not None:
            return {**row, "model_id": model_id, "experiment_id": board.experiment_id}
    raise PipelineError(f"no run of '{experiment}' has a logged model and a validation error without having "
                        "diverged: train a model with a validation split (data.val_fraction > 0) first")


def register_champion(tracking_uri: str, experiment: str, name: str | None = None) -> dict:
    """Register the champion's LoggedModel as a version of NAME and point the alias `champion` at it."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.results.leaderboard import selection_error

    row = champion_row(tracking_uri, experiment)
    name = name or experiment
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    version = str(mlflow.register_model(f"models:/{row['model_id']}", name).version)
    client.set_registered_model_alias(name, ALIAS, version)
    for key, value in (("source_run_id", row["run_id"]), ("model_id", row["model_id"]), ("model", row["model"]),
                       ("val_top1_err", f"{selection_error(row):.4f}"), ("top1_err", f"{row['top1_err']:.4f}")):
        client.set_model_version_tag(name, version, key, value)
    return {"name": name, "version": version, "uri": f"models:/{name}@{ALIAS}", "run_id": row["run_id"],
            "model_id": row["model_id"], "model": row["model"], "top1_err": row["top1_err"],
            "val_top1_err": selection_error(row)}


def _check_images(paths: list[str]) -> None:
    """Each path an image PIL decodes whole (truncated files fail only when decoded), within PIL's size limit."""
    import warnings

    from PIL import Image

    for path in paths:
        if not Path(path).is_file():
            raise PipelineError(f"image file {path} not found: give paths of PNG/JPEG files")
        try:
            with warnings.catch_warnings():
                # Above Image.MAX_IMAGE_PIXELS PIL only warns (an error above twice that): refuse both.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PipelineError(f"image {path} is too large to classify ({exc}): give a smaller image") from None
        except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
            raise PipelineError(f"{path} is not an image file PIL can read (PNG, JPEG, ...)") from None


def predict(tracking_uri: str, images: list[str], run_id: str | None = None, model_uri: str | None = None,
            k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per image, from a run's LoggedModel or a model URI (`models:/m-<id>`,
    `models:/NAME@champion`), loaded with `mlflow.pyfunc.load_model`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.logged_models import model_of_run
    from pipeline.tracking.store import redact

    if bool(run_id) == bool(model_uri):
        raise PipelineError("give either --run RUN_ID or --model-uri models:/NAME@champion (one of them)")
    _check_images(images)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if run_id:
        client = MlflowClient(tracking_uri)
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise PipelineError(f"cannot read run {run_id} from {redact(tracking_uri)} "
                                    f"({redact(str(exc).splitlines()[0][:200])})") from None
            raise PipelineError(f"no run {run_id} in {redact(tracking_uri)}: give a run id from the "
                                "leaderboard") from None
        model_id = model_of_run(client, run_id)
        if model_id is None:
            raise PipelineError(f"run {run_id} has no logged model: give the id of a finished training run")
        model_uri = f"models:/{model_id}"
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise PipelineError(f"cannot load {model_uri} from {redact(tracking_uri)} "
                            f"({redact(str(exc).splitlines()[0][:200])}): "
                            "register one with `pipeline register --experiment NAME`") from None
    frame = model.predict(pd.DataFrame({"image": [str(Path(i).resolve()) for i in images]}))
    return [json.loads(top)[:k] for top in frame["top5"]]
