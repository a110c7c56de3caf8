"""A clip_image_classifier started from a CLIP model (`init: clip:...`), and WiSE-FT after it is fine-tuned.

On the driver, before anything is written: the CLIP model (the spec's clip_pretrain unit's, from its run's
artifacts, weights only; or an open_clip model and tag through open_clip's own loading) gives its image
tower's weights as they are, and the head is its zero-shot classifier (the class names' text embeddings
averaged over the spec's evaluation templates) times its logit scale, bias 0. The classifier's input,
normalised by the data's statistics, is mapped to the tower's normalisation (`input_scale`, `input_shift`):
at step 0 the classifier predicts as zero-shot does.

WiSE-FT (Wortsman et al., 2022): after fine-tuning, the weights (1-a) zero-shot + a fine-tuned for each
mixing weight a, evaluated on the test set (and the validation set when there is one)."""
from __future__ import annotations

import tempfile
from typing import Any

from pipeline.errors import PipelineError
from pipeline.spec.sections import CLIP_CLASSIFIER, ModelEntry


def clip_source(entry: ModelEntry, value: str, shape: dict[str, Any], outputs: dict[str, dict] | None,
                where: str) -> str:
    """runs:/RUN_ID of the pretraining unit `value` names (unit:clip_pretrain/MODEL), or the open_clip
    model and tag as given; checked against the entry and its data first."""
    if entry.name != CLIP_CLASSIFIER:
        raise PipelineError(f"{where}: a clip init starts a {CLIP_CLASSIFIER}, not a {entry.name}")
    if entry.wise_ft is not None and shape["stream"]:
        raise PipelineError(f"models[{entry.name}].wise_ft: WiSE-FT is evaluated on an in-memory test set: set "
                            "data.streaming: false or remove wise_ft")
    if not value.startswith("unit:"):
        return value
    run_id = ((outputs or {}).get(value[len("unit:"):]) or {}).get("run_id")
    if not run_id:
        raise PipelineError(f"{where}: unit {value[len('unit:'):]} left no CLIP model to start from: pretrain it "
                            f"again (--rerun '{value[len('unit:'):]}')")
    return f"runs:/{run_id}"


def clip_weights(context, entry: ModelEntry, source: str, shape: dict[str, Any], where: str) -> tuple[str, dict]:
    """(the lineage's source, the classifier's state dict) for `source`, runs:/RUN_ID or NAME[.TAG]."""
    import torch

    from models._factory import build_model
    from models.clip import create_model
    from pipeline.clip.data import ImageInput
    from pipeline.clip.evaluation import load_trained, zero_shot_classifier
    from pipeline.data.captions import EVAL_TEMPLATES

    if source.startswith("runs:/"):
        run_id = source[len("runs:/"):]
        with tempfile.TemporaryDirectory() as folder:
            try:
                directory = context.tracker.client.download_artifacts(run_id, "model", folder)
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise PipelineError(f"{where}: run {run_id} has no CLIP model to start from ({reason})") from None
            clip, tokenizer, image_input, meta = load_trained(directory)
        name, lineage = meta["model"], f"clip:runs:/{run_id}/model"
    else:
        name, _, tag = source.partition(".")
        clip, tokenizer = create_model(name, tag or None)
        image_input, lineage = ImageInput.of_model(clip), f"clip:{source}"
    classes = list(shape["classes"])
    model = build_model(entry.name, len(classes), shape["in_chans"], **entry.kwargs)
    if model.clip_model != name:
        raise PipelineError(f"{where}: the CLIP model is a {name}, the entry's tower a {model.clip_model}: set "
                            f"kwargs.clip_model: {name}")
    spec_clip = getattr(context.spec, "clip", None)
    templates = spec_clip.captions.templates()[1] if spec_clip is not None else list(EVAL_TEMPLATES)
    device = torch.device("cpu")
    with torch.no_grad():
        head = zero_shot_classifier(clip, tokenizer, classes, templates, device)  # (embed_dim, classes)
        scale = clip.logit_scale.exp().float()
    state = model.state_dict()
    tower = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    wanted = {k for k in state if k.startswith("visual.")}
    if set(tower) != wanted:
        odd = sorted(set(tower) ^ wanted)[0]
        raise PipelineError(f"{where}: the image tower of {name} does not fit the classifier's ({odd}): give "
                            f"kwargs.clip_model: {name} and the model's own kwargs")
    state.update({k: v.detach().clone() for k, v in tower.items()})
    state["head.weight"] = (scale * head.T).contiguous()
    state["head.bias"] = torch.zeros(len(classes))
    # The data's normalisation to the tower's: x_tower = x_data * std_data / std_tower + (mean_data - mean_tower) / std_tower
    data_mean, data_std = _rgb(shape["mean"]), _rgb(shape["std"])
    tower_mean, tower_std = _rgb(image_input.mean), _rgb(image_input.std)
    state["input_scale"] = data_std / tower_std
    state["input_shift"] = (data_mean - tower_mean) / tower_std
    return lineage, state


def _rgb(values) -> Any:
    import torch

    values = torch.tensor([float(v) for v in values])
    return values.repeat(3) if len(values) == 1 else values


def wise_ft(context, entry: ModelEntry, data, shape: dict[str, Any], mean, std, zero_shot: dict,
            fine_tuned: dict) -> dict[str, float]:
    """Top-1 (%) of (1-a) zero-shot + a fine-tuned for each a of the entry's wise_ft, on the test set
    (`wise_ft_top1_a0.50`) and the validation set when there is one (`wise_ft_val_top1_a0.50`)."""
    import torch

    from models._factory import build_model
    from pipeline.data.augment import normalize
    from pipeline.scoring import topk_hits

    splits = context.splits(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(entry.name, len(shape["classes"]), shape["in_chans"], **entry.kwargs).to(device).eval()
    mean, std = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    sets = [("", splits.test)] + ([("val_", splits.val)] if len(splits.val) else [])
    metrics = {}
    for a in entry.wise_ft:
        mixed = {k: (1 - a) * v.float() + a * fine_tuned[k].float() if v.is_floating_point() else fine_tuned[k]
                 for k, v in zero_shot.items()}
        model.load_state_dict(mixed)
        for prefix, split in sets:
            correct = 0
            with torch.no_grad():
                for images, labels in zip(split.images.split(256), split.labels.split(256)):
                    logits = model(normalize(images.to(device), mean, std))
                    correct += topk_hits(logits, labels.to(device), k=1)[:, 0].sum().item()
            metrics[f"wise_ft_{prefix}top1_a{a:.2f}"] = 100 * correct / max(len(split.labels), 1)
    return metrics


def wise_ft_line(alphas: list[float], metrics: dict[str, float]) -> str:
    """`a=0.50 top-1 91.20% (validation 90.80%), ...`: what the run prints."""
    parts = []
    for a in alphas:
        part = f"a={a:.2f} top-1 {metrics[f'wise_ft_top1_a{a:.2f}']:.2f}%"
        if (val := metrics.get(f"wise_ft_val_top1_a{a:.2f}")) is not None:
            part += f" (validation {val:.2f}%)"
        parts.append(part)
    return ", ".join(parts)
