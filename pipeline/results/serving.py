"""The pyfunc of every classifier the pipeline logs, as MLflow "models from code": this file is the model's
code (nothing pickled), its weights a state dict loaded with `weights_only=True`, its `model.json` what
rebuilds and preprocesses it (channels, size, normalization as in training).

`mlflow.pyfunc.load_model("models:/m-<id>")` (or `models:/NAME@champion`) gives a model whose `predict`
takes a DataFrame with an `image` column (file paths or encoded bytes) and returns the top label, its
probability and the top-5 as JSON. An ensemble's model (`model.json` kind `ensemble`) holds its members'
weights and averages their softmax outputs, as the ensemble stage scored it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.models import set_model


class Classifier:
    """A trained network with its preprocessing: image files or PIL images in, class probabilities out."""

    def __init__(self, weights: str | Path, meta: str | Path):
        from models._factory import build_model

        self.meta = json.loads(Path(meta).read_text())
        self.classes = list(self.meta["classes"])
        self.model = build_model(self.meta["model"], len(self.classes), self.meta["in_chans"],
                                 **self.meta.get("model_kwargs", {}))
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()

    def preprocess(self, images) -> torch.Tensor:
        """The evaluation's preprocessing recorded in model.json (`pipeline.data.preprocess`), then the
        normalization of training; a model logged before that record resizes whole images."""
        from pipeline.data.augment import normalize
        from pipeline.data.preprocess import eval_images, eval_preprocessing

        preprocessing = self.meta.get("preprocessing") or eval_preprocessing(self.meta["in_chans"],
                                                                            self.meta["image_size"])
        pixels = eval_images(images, preprocessing)
        return normalize(pixels, torch.tensor(self.meta["mean"]), torch.tensor(self.meta["std"]))

    @torch.no_grad()
    def probabilities(self, images) -> torch.Tensor:
        return self.model(self.preprocess(images)).float().softmax(1)

    def top(self, images, k: int = 3) -> list[list[tuple[str, float]]]:
        return top_labels(self.probabilities(images), self.classes, k)


class Ensemble:
    """Members' softmax outputs, averaged (each member preprocesses the images as it was trained)."""

    def __init__(self, members: list[Classifier]):
        self.members = members
        self.classes = members[0].classes

    @torch.no_grad()
    def probabilities(self, images) -> torch.Tensor:
        images = [image.read() if hasattr(image, "read") else image for image in images]  # each member reads them
        return torch.stack([m.probabilities([io.BytesIO(i) if isinstance(i, bytes) else i for i in images])
                            for m in self.members]).mean(0)

    def top(self, images, k: int = 3) -> list[list[tuple[str, float]]]:
        return top_labels(self.probabilities(images), self.classes, k)


def top_labels(probs: torch.Tensor, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(classes[i], float(p)) for p, i in zip(vs, ix)] for vs, ix in zip(values, indices)]


def load(artifacts: dict[str, str]) -> Classifier | Ensemble:
    """The classifier of a model's artifacts: `weights` and `meta`, or an ensemble's `meta` with
    `weights_<i>` and `meta_<i>` per member."""
    meta = json.loads(Path(artifacts["meta"]).read_text())
    if meta.get("kind") == "ensemble":
        return Ensemble([Classifier(artifacts[f"weights_{i}"], artifacts[f"meta_{i}"])
                         for i in range(len(meta["members"]))])
    return Classifier(artifacts["weights"], artifacts["meta"])


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc: input a DataFrame with an `image` column (file paths or encoded bytes), or a list of paths;
    output a DataFrame with the top label, its probability, and the top-5 as JSON."""

    def load_context(self, context):
        self.classifier = load(context.artifacts)

    # A DataFrame type hint: MLflow passes the input through (no schema inference from it).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        images = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        images = [io.BytesIO(i) if isinstance(i, (bytes, bytearray)) else i for i in images]
        top = self.classifier.top(images, k=5)
        return pd.DataFrame({"label": [t[0][0] for t in top], "probability": [t[0][1] for t in top],
                             "top5": [json.dumps(t) for t in top]})


set_model(ImageClassifierModel())
