"""Where a model entry's weights start (`init:`), resolved on the driver before anything is written.

Every source goes through timm's own pretrained path, `timm.create_model(name, pretrained=True, ...)`: a hub
tag as timm fetches it (honouring the hub's cache and `HF_HUB_OFFLINE`), a weights file, a LoggedModel's
`model.pt` and another unit's LoggedModel through `pretrained_cfg_overlay={"file": ...}`; a CLIP model
(`clip:`) starts a clip_image_classifier through `clip_transfer.py` instead. So the classifier is
reset when the class count differs, the first convolution is adapted to the data's channels
(`adapt_input_conv`) and a ViT's position embeddings are resampled to its image size (its checkpoint filter).
The adapted state dict travels to the workers, which load it strictly into the model they build; its digest is
part of the unit's key. Files load with `weights_only=True` (timm's `load_state_dict`) or as safetensors."""
from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.spec.sections import ModelEntry, init_source
from pipeline.training.config import Init

SCRATCH = Init(source="scratch", digest="")


def weights_digest(state: dict) -> str:
    """A digest of a state dict's names, dtypes, shapes and values."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def resolve_init(context, entry: ModelEntry, shape: dict[str, Any], outputs: dict[str, dict] | None = None,
                 source: str | None = None) -> Init:
    """The entry's initial weights for a data set of `shape` (classes, channels), once per context; `source` is
    the unit an `init: unit:` entry starts from when it is not the one named (a seed's own, `train/NAME@seedK`)."""
    kind, value = init_source(entry.init)
    if kind == "scratch":
        return SCRATCH
    if kind == "unit":
        value = source or value
        output = (outputs or {}).get(value) or {}
        if not output.get("model_id"):
            raise PipelineError(f"models[{entry.name}].init {entry.init}: unit {value} left no LoggedModel to start "
                                f"from: train it again (--rerun '{value}')")
        kind, value = "model", f"models:/{output['model_id']}"
    where = f"models[{entry.name}].init {entry.init}"
    if kind == "clip":  # a CLIP model's image tower, the head its zero-shot classifier (clip_transfer.py)
        from pipeline.training.clip_transfer import clip_source

        value = clip_source(entry, value, shape, outputs, where)
    key = json.dumps([kind, value, entry.name, entry.kwargs, list(shape["classes"]), shape["in_chans"]]
                     + ([list(shape["mean"]), list(shape["std"])] if kind == "clip" else []),
                     sort_keys=True, default=str)
    if key not in context.weights:
        if kind == "clip":
            from pipeline.training.clip_transfer import clip_weights

            source, state = clip_weights(context, entry, value, shape, where)
            context.weights[key] = Init(source=source, digest=weights_digest(state), weights=state)
        else:
            context.weights[key] = _resolve(context, entry, kind, value, list(shape["classes"]), shape["in_chans"])
    return context.weights[key]


def _resolve(context, entry: ModelEntry, kind: str, value: str, classes: list[str], in_chans: int) -> Init:
    where = f"models[{entry.name}].init {entry.init}"
    num_classes = len(classes)
    if kind == "timm":
        state = _from_hub(entry, value, num_classes, in_chans, where)
        name = value if "." in value else f"{entry.name}.{value}" if value else entry.name
        return Init(source=f"timm:{name}", digest=weights_digest(state), weights=state)
    if kind == "file":
        path = Path(value).expanduser()
        if not path.is_file():
            raise PipelineError(f"{where}: no such weights file {path}: give the path of a safetensors file or a "
                                "saved state dict")
        state = _from_file(entry, path, num_classes, in_chans, where)
        return Init(source=f"file:{path.name}#{file_digest(path)}", digest=weights_digest(state), weights=state)
    model_id = logged_model_id(context, value, where)
    with tempfile.TemporaryDirectory() as folder:
        from pipeline.tracking.model_files import download_model_files

        weights, meta_file = download_model_files(context.tracker, model_id, Path(folder))
        meta = json.loads(meta_file.read_text())
        if meta.get("model") != entry.name:
            raise PipelineError(f"{where}: model {model_id} is a {meta.get('model')}, not a {entry.name}: start "
                                f"{entry.name} from a model of its own architecture")
        # A model of other classes (pretrained on some classes, fine-tuned on others) gets a new classifier,
        # even where the count is the same: its rows would stand for the source's classes.
        state = _from_file(entry, weights, num_classes, in_chans, where,
                           reset_head=meta.get("classes") not in (None, classes))
    return Init(source=f"models:/{model_id}", digest=weights_digest(state), weights=state)


def logged_model_id(context, uri: str, where: str) -> str:
    """The LoggedModel id of models:/m-ID, models:/NAME@ALIAS or models:/NAME/VERSION in the run's store."""
    client = context.tracker.client if context.tracker is not None else None
    if client is None:
        raise PipelineError(f"{where}: the tracking store holds no models yet: train the source model first")
    name = uri[len("models:/"):].strip("/")
    try:
        if name.startswith("m-") and "/" not in name and "@" not in name:
            return client.get_logged_model(name).model_id
        if "@" in name:
            registered, alias = name.split("@", 1)
            version = client.get_model_version_by_alias(registered, alias)
        else:
            registered, number = name.rsplit("/", 1)
            version = client.get_model_version(registered, number)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{where}: no such model in {context.tracker.display_uri} ({reason}): give models:/m-<id> "
                            "or models:/NAME@alias of a model in this store") from None
    # A version registered from a LoggedModel names it (model_id; in some stores only its source, models:/m-ID).
    source = str(getattr(version, "source", "") or "")
    model_id = getattr(version, "model_id", None) or (source[len("models:/"):] if source.startswith("models:/m-") else None)
    if not model_id:
        raise PipelineError(f"{where}: registered model {name} has no LoggedModel of this product: give models:/m-<id>")
    return model_id


def _from_hub(entry: ModelEntry, tag: str, num_classes: int, in_chans: int, where: str) -> dict:
    import timm

    import models  # noqa: F401  (the zoo in timm's registry)

    name = tag if "." in tag else f"{entry.name}.{tag}" if tag else entry.name
    if name.split(".")[0] != entry.name:
        raise PipelineError(f"{where}: timm's tag {name} is for {name.split('.')[0]}, not {entry.name}: give "
                            f"timm:{entry.name}.TAG or just the tag")
    try:
        with _seeded():
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                      **entry.kwargs)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"{where}: timm could not load the pretrained weights ({reason}): check the tag "
                            f"(timm.list_pretrained('{entry.name}*')), and where there is no network put them in "
                            "the hub's cache first or give a weights file") from None
    return model.state_dict()


@contextmanager
def _seeded():
    """A new classifier (where timm resets one) drawn from a fixed seed: the same weights give the same initial
    state, and so the same unit key, on every run; the caller's random state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _from_file(entry: ModelEntry, path: Path, num_classes: int, in_chans: int, where: str,
               reset_head: bool = False) -> dict:
    """A weights file through timm's pretrained path, after checking that it is this architecture's;
    `reset_head` gives it a new classifier whatever the class counts."""
    import timm
    from timm.models import load_state_dict

    from models._factory import build_model

    try:
        source = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{where}: {path} is not a safetensors file or a state dict of tensors ({reason}): "
                            "save the weights with safetensors or torch.save(model.state_dict())") from None
    model = build_model(entry.name, num_classes, in_chans, "meta", **entry.kwargs)
    cfg = dict(model.pretrained_cfg)
    head = sorted(n for n in _head_names(model))
    head_module = head[0].rsplit(".", 1)[0] if head else ""
    first_conv = cfg.get("first_conv") or ""
    _check_fits(source, model, set(head), first_conv, where)
    overlay = {"file": str(path), "num_classes": num_classes, "classifier": head_module or None,
               "input_size": (in_chans, *tuple(cfg.get("input_size") or (3, 224, 224))[1:])}
    if head_module and f"{head_module}.weight" in source:
        overlay["num_classes"] = -1 if reset_head else int(source[f"{head_module}.weight"].shape[0])
    if first_conv and f"{first_conv}.weight" in source:
        overlay["input_size"] = (int(source[f"{first_conv}.weight"].shape[1]), *overlay["input_size"][1:])
    try:
        with _seeded():
            loaded = timm.create_model(entry.name, pretrained=True, pretrained_cfg_overlay=overlay,
                                       num_classes=num_classes, in_chans=in_chans, **entry.kwargs)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"{where}: timm could not load {path.name} into {entry.name} ({reason}): give weights "
                            f"of {entry.name}") from None
    return loaded.state_dict()


def _head_names(model) -> set[str]:
    from pipeline.training.finetune import head_names

    return head_names(model) if hasattr(model, "get_classifier") else set()


def _check_fits(source: dict, model, head: set[str], first_conv: str, where: str) -> None:
    """The first parameter or buffer of the model that the file lacks or holds in another shape, named in one
    line; the classifier, the first convolution and position embeddings are timm's to adapt."""
    adapted = head | ({f"{first_conv}.weight"} if first_conv else set())
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        if name not in source:
            if name not in head:
                raise PipelineError(f"{where}: the weights have no {name} that {model.pretrained_cfg.get('architecture')}"
                                    " needs: they are of another architecture; give weights of this model")
            continue
        if name in adapted or "pos_embed" in name:
            continue
        if tuple(source[name].shape) != tuple(tensor.shape):
            raise PipelineError(f"{where}: layer {name} does not fit: the weights hold {tuple(source[name].shape)}, "
                                f"the model needs {tuple(tensor.shape)}; give weights of this model with these kwargs")
