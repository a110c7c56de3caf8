"""The clip section: CLIP model, captions, contrastive pretraining and zero-shot evaluation."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.spec import names
from pipeline.spec.hints import _did_you_mean
from pipeline.spec.sections import Strict


class ClipCaptionsConfig(Strict):
    """Image-text pairs: captions made from the data set's class labels, or an image-caption data set."""

    path: str | None = None  # a `datasets` image-caption set (hub id or local folder); None: from class labels
    image_column: str = "image"
    text_column: str = "text"  # strings, or lists of strings (several captions per image)
    split: str = "train"
    limit: int | None = Field(None, ge=1)
    descriptions: dict[str, list[str]] = Field(default_factory=dict)  # class name -> other names (adds to built-ins)
    train_templates: list[str] | None = None  # default: pipeline.data.captions.TRAIN_TEMPLATES
    eval_templates: list[str] | None = None  # zero-shot prompts; default: EVAL_TEMPLATES (none used in training)

    @field_validator("train_templates", "eval_templates")
    @classmethod
    def _placeholders(cls, templates):
        from pipeline.data.captions import check_templates

        return None if templates is None else check_templates(templates)

    def templates(self) -> tuple[list[str], list[str]]:
        from pipeline.data.captions import EVAL_TEMPLATES, TRAIN_TEMPLATES

        return self.train_templates or list(TRAIN_TEMPLATES), self.eval_templates or list(EVAL_TEMPLATES)


class ClipTrainConfig(Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=2)  # per worker; the contrastive negatives are the global batch
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    init_temperature: float = Field(0.07, gt=0, le=1)  # learnable (logit_scale = 1 / temperature, capped at 100)
    local_loss: bool = False  # ClipLoss: each worker scores its own rows against the global batch
    captions_per_group: int | None = Field(2, ge=1)  # distinct captions a class draws per step; None: one per image
    # Train for at most this long (held-out evaluation included), the cosine schedule running over the
    # epochs or the time, whichever ends first (warm-up is skipped).
    time_limit_min: float | None = Field(None, gt=0)
    heldout_pairs: int = Field(1000, ge=10)  # retrieval metrics per epoch
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU
    seed: int = 0


class ZeroShotConfig(Strict):
    # "pretrain": the clip_pretrain stage's model (this run's, else the experiment's latest finished one
    # in MLflow); or any open_clip model name, with `pretrained` weights.
    model: str = "pretrain"
    pretrained: str | None = None
    linear_probe: bool = True
    probe_train_images: int | None = Field(20000, ge=10)  # training images whose features train the probe
    probe_steps: int = Field(300, ge=1)
    probe_lr: float = Field(0.01, gt=0)

    @field_validator("model")
    @classmethod
    def _known(cls, name: str) -> str:
        return name if name == "pretrain" else check_clip_model(name)


class ClipConfig(Strict):
    """Contrastive image-text pretraining (clip_pretrain) and zero-shot evaluation (zero_shot)."""

    model: str = "clip-rn-32"  # a small model of models.clip.SMALL_MODELS or any open_clip model name
    pretrained: str | None = None  # an open_clip pretrained tag (openai, laion2b_...) or a weights file
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to open_clip.create_model
    captions: ClipCaptionsConfig = Field(default_factory=ClipCaptionsConfig)
    train: ClipTrainConfig = Field(default_factory=ClipTrainConfig)
    zero_shot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)
    # Overrides of the data section for the pretraining's images and their captions (its own subset of the
    # classes, say: pretrain on some classes, then zero-shot, probe and fine-tune on others). The zero_shot stage
    # evaluates on the data section as it is.
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known(cls, name: str) -> str:
        return check_clip_model(name)

    @model_validator(mode="after")
    def _data_with_labels_only(self):
        if self.data and self.captions.path:
            raise ValueError("data applies to captions made from the data set's labels, and captions.path gives an "
                             "image-caption set instead: remove one of them")
        return self


def check_clip_model(name: str) -> str:
    """A ValueError naming close matches when `name` is no open_clip model (hf-hub:/local-dir: pass)."""
    if name.startswith(("hf-hub:", "local-dir:")) or names.known("clip_models", name):
        return name
    small = sorted(n for n in names.names("clip_models") if n.startswith("clip-"))
    raise ValueError(f"unknown CLIP model '{name}'{_did_you_mean(name, names.names('clip_models'))}: use one of the "
                     f"small models {', '.join(small)} or any open_clip model name (open_clip.list_models())")
