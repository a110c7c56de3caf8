"""The leaderboard's best model in the MLflow Model Registry (alias `champion`), and inference on image files.

The registered model is an MLflow pyfunc that holds the weights, `model.json` and its preprocessing
(channels, resize, normalization as in training), so `mlflow.pyfunc.load_model("models:/NAME@champion")`
classifies images without the pipeline's spec.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch

from pipeline.errors import PipelineError

ALIAS = "champion"
MODEL_KINDS = ("train", "retrain")  # leaderboard rows backed by one network's weights


class Classifier:
    """A trained network with its preprocessing: image files or PIL images in, class probabilities out."""

    def __init__(self, weights: str | Path, meta: str | Path):
        from pipeline.complexity import build_model

        self.meta = json.loads(Path(meta).read_text())
        self.classes = list(self.meta["classes"])
        self.model = build_model(self.meta["model"], len(self.classes), self.meta["in_chans"],
                                 **self.meta.get("model_kwargs", {}))
        self.model.load_state_dict(torch.load(weights, map_location="cpu"))
        self.model.eval()

    def preprocess(self, images) -> torch.Tensor:
        """Channels, size and normalization as the training data got them (pipeline.data)."""
        from PIL import Image

        from pipeline.data.augment import normalize
        from pipeline.data.huggingface import decode_images

        opened = [image if isinstance(image, Image.Image) else Image.open(image) for image in images]
        pixels = decode_images(opened, self.meta["in_chans"], self.meta["image_size"])
        return normalize(pixels, torch.tensor(self.meta["mean"]), torch.tensor(self.meta["std"]))

    @torch.no_grad()
    def probabilities(self, images) -> torch.Tensor:
        return self.model(self.preprocess(images)).float().softmax(1)

    def top(self, images, k: int = 3) -> list[list[tuple[str, float]]]:
        probs = self.probabilities(images)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(p)) for p, i in zip(vs, ix)] for vs, ix in zip(values, indices)]


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: input a DataFrame with an `image` column (file paths or encoded bytes), or a list of
    paths; output a DataFrame with the top label, its probability, and the top-5 as JSON."""

    def load_context(self, context):
        self.classifier = Classifier(context.artifacts["weights"], context.artifacts["meta"])

    # A DataFrame type hint: MLflow passes the input through (no schema inference from it).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import io

        images = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        images = [io.BytesIO(i) if isinstance(i, (bytes, bytearray)) else i for i in images]
        top = self.classifier.top(images, k=5)
        return pd.DataFrame({"label": [t[0][0] for t in top], "probability": [t[0][1] for t in top],
                             "top5": [json.dumps(t) for t in top]})


def _download_model(client, run_id: str, directory: str) -> tuple[str, str]:
    paths = {a.path for a in client.list_artifacts(run_id, "model")}
    if not {"model/model.pt", "model/model.json"} <= paths:
        raise PipelineError(f"run {run_id} has no saved model (model/model.pt, model/model.json): "
                            "give the id of a finished training run")
    return (client.download_artifacts(run_id, "model/model.pt", directory),
            client.download_artifacts(run_id, "model/model.json", directory))


def champion_row(tracking_uri: str, experiment: str) -> dict:
    """The best leaderboard row that is one trained network (ensembles and references are not)."""
    from mlflow import MlflowClient

    from pipeline import leaderboard

    board = leaderboard.build(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    for row in board.rows:
        if row["kind"] in MODEL_KINDS and not row["diverged"] \
                and any(a.path == "model/model.pt" for a in client.list_artifacts(row["run_id"], "model")):
            return {**row, "experiment_id": board.experiment_id}
    raise PipelineError(f"no run on the leaderboard of '{experiment}' has saved weights (model/model.pt) without "
                        "having diverged: train a model first")


def register_champion(tracking_uri: str, experiment: str, name: str | None = None) -> dict:
    """Log the leaderboard's best model as a pyfunc, register it as NAME and point the alias `champion` at it."""
    import mlflow
    import PIL
    import timm
    from mlflow import MlflowClient

    row = champion_row(tracking_uri, experiment)
    name = name or experiment
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as directory:
        weights, meta = _download_model(client, row["run_id"], directory)
        with mlflow.start_run(experiment_id=row["experiment_id"], run_name=f"register-{row['model']}",
                              tags={"stage": "registry", "source_run_id": row["run_id"], "model_name": row["model"]}):
            info = mlflow.pyfunc.log_model(
                name="classifier", python_model=ImageClassifierModel(),
                artifacts={"weights": weights, "meta": meta},
                # The model code travels with it; requirements are given so MLflow need not infer them.
                code_paths=[str(root / "pipeline"), str(root / "models")],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}",
                                  f"pillow=={PIL.__version__}", "pandas", "numpy"],
                registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, ALIAS, version)
    for key, value in (("source_run_id", row["run_id"]), ("model", row["model"]),
                       ("top1_err", f"{row['top1_err']:.4f}")):
        client.set_model_version_tag(name, version, key, value)
    return {"name": name, "version": version, "uri": f"models:/{name}@{ALIAS}", "run_id": row["run_id"],
            "model": row["model"], "top1_err": row["top1_err"]}


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
    """Top-k (label, probability) per image, from a training run's weights or a registered model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import redact

    if bool(run_id) == bool(model_uri):
        raise PipelineError("give either --run RUN_ID or --model-uri models:/NAME@champion (one of them)")
    _check_images(images)
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
        with tempfile.TemporaryDirectory() as directory:
            classifier = Classifier(*_download_model(client, run_id, directory))
        return classifier.top(images, k)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise PipelineError(f"cannot load {model_uri} from {redact(tracking_uri)} "
                            f"({redact(str(exc).splitlines()[0][:200])}): "
                            "register one with `pipeline register --experiment NAME`") from None
    frame = model.predict(pd.DataFrame({"image": [str(Path(i).resolve()) for i in images]}))
    return [json.loads(top)[:k] for top in frame["top5"]]
