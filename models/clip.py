"""Small open_clip models for small images, registered at run time (architectures as data), and the factory."""
from __future__ import annotations

import difflib
import json
import logging
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# A small text tower: the captions are short and few, and the token embedding (vocabulary 49,408)
# dominates the parameter count, so it stays narrow.
SMALL_TEXT = {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


# Small open_clip models for 28-32 px images, registered at run time (architectures as data).
SMALL_MODELS: dict[str, dict[str, Any]] = {
    # A ViT image tower: 16 tokens of 7x7 patches at 28 px.
    "clip-vit-28": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 128, "layers": 4,
                                   "head_width": 32, "mlp_ratio": 2.0}},
    # A CNN image tower: the CIFAR-style ResNet-20 of the model zoo, through open_clip's timm adapter.
    "clip-resnet20-28": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                         "vision_cfg": {"image_size": 28, "timm_model_name": "resnet20", "timm_pool": "avg",
                                        "timm_proj": "linear"}},
    # open_clip's own modified ResNet (attention pooling), one bottleneck block per stage, at 32 px.
    "clip-rn-32": {"embed_dim": 128, "text_cfg": SMALL_TEXT,
                   "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None}},
}


_REGISTERING = threading.Lock()


def register_small_models() -> None:
    """Make the small models known to open_clip (and the zoo's resnet20 to timm, for a timm image tower), once;
    a workflow's threads ask at the same time, and open_clip's rescan would read another's deleted folder."""
    with _REGISTERING:
        _register_small_models()


@lru_cache(maxsize=1)
def _register_small_models() -> None:
    import open_clip

    from models import resnet  # noqa: F401  (the zoo's resnet20 in timm's registry: clip-resnet20-28's tower)

    # open_clip registers configs from JSON files only, read at once (later rescans keep them).
    with tempfile.TemporaryDirectory(prefix="pipeline-clip-configs-") as folder:
        for name, config in SMALL_MODELS.items():
            (Path(folder) / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)


def model_names() -> list[str]:
    import open_clip

    register_small_models()
    return open_clip.list_models()


def check_model_name(name: str) -> str:
    """A ValueError naming close matches when `name` is no open_clip model (hf-hub:/local-dir: pass)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    known = model_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown CLIP model '{name}'{hint}: use one of the small models "
                         f"{', '.join(SMALL_MODELS)} or any open_clip model name (open_clip.list_models())")
    return name


def create_model(name: str, pretrained: str | None = None, **kwargs):
    """An open_clip model and its tokenizer; one-line errors for unknown names and missing weights."""
    import open_clip

    check_model_name_or_raise(name)
    if pretrained and not Path(pretrained).expanduser().is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise PipelineError(f"no pretrained weights '{pretrained}' for CLIP model '{name}': use one of "
                                f"{', '.join(tags) or 'none (train it: stage clip_pretrain)'} or a weights file")
    try:
        logging.getLogger().addFilter(_OPEN_CLIP_ROOT_LOGS)  # once: adding the same filter again does nothing
        model = open_clip.create_model(name, pretrained=pretrained, output_dict=True, **kwargs)
    except RuntimeError as exc:
        if pretrained and "download" in str(exc).lower():
            raise PipelineError(f"the pretrained weights '{pretrained}' of CLIP model '{name}' cannot be fetched "
                                f"(offline?): download them once where the Hugging Face hub is reachable "
                                f"(they are cached), or give a local weights file as pretrained") from None
        raise
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # models with a Hugging Face tokenizer (SigLIP, ...) fetch it from the hub
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"the tokenizer of CLIP model '{name}' cannot be loaded ({reason}): it comes from "
                            f"the Hugging Face hub; fetch it once where the hub is reachable") from None
    return model, tokenizer


class _OpenClipRootLogs(logging.Filter):
    """Drops the records open_clip logs to the root logger (an untrained start, a failed download): create_model
    reports those itself. A filter installed once, not a raised root level: a workflow builds models in several
    threads at once, and one thread restoring the level would let another's warning through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in Path(record.pathname).parts


_OPEN_CLIP_ROOT_LOGS = _OpenClipRootLogs()


def check_model_name_or_raise(name: str) -> None:
    try:
        check_model_name(name)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
