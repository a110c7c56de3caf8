"""The train and eval transforms of a streamed data set: timm's (`create_transform`, `resolve_data_config`).

They run in Ray Data's CPU tasks on decoded uint8 tensors and stop before normalization (timm's
`use_prefetcher=True` form): the batch reaches the training worker as uint8 and is normalized on its device.
RandAugment/AutoAugment work on PIL images only, so with `auto_augment` set the images are decoded by PIL.
"""
from __future__ import annotations

from typing import Any


def resolve_transforms(model: str, options: dict[str, Any], image_size: int, in_chans: int,
                       data_mean, data_std, flip_keeps_label: bool = True) -> dict[str, Any]:
    """The transform options a worker's stream applies: the spec's, else the model's pretrained config
    (crop_pct, interpolation, mean and std, as `timm.data.resolve_data_config` gives them), else the data set's
    mean and std (when the model's config has another channel count)."""
    import timm
    from timm.data import resolve_data_config

    import models  # noqa: F401  (the zoo's models and their configs, registered in timm's registry)

    cfg = timm.models.get_pretrained_cfg(model)
    cfg = cfg.to_dict() if cfg is not None else {}
    if len(cfg.get("mean") or ()) != in_chans:
        cfg = {**cfg, "mean": tuple(data_mean), "std": tuple(data_std)}
    args = {"input_size": (in_chans, image_size, image_size),
            **{k: options[k] for k in ("crop_pct", "interpolation", "mean", "std") if options.get(k) is not None}}
    resolved = resolve_data_config(args, pretrained_cfg=cfg)
    common = {"size": image_size, "in_chans": in_chans, "interpolation": resolved["interpolation"]}
    train = {**common, "train": True, "scale": tuple(options.get("scale") or (0.08, 1.0)),
             "ratio": tuple(options.get("ratio") or (3 / 4, 4 / 3)), "hflip": options.get("hflip", 0.5) if flip_keeps_label else 0.0,
             "color_jitter": options.get("color_jitter", 0.0) if in_chans == 3 else 0.0,
             "auto_augment": options.get("auto_augment") if in_chans == 3 else None}
    return {"train": train, "eval": {**common, "train": False, "crop_pct": resolved["crop_pct"]},
            "mean": tuple(resolved["mean"]), "std": tuple(resolved["std"])}


def build_transform(options: dict[str, Any]):
    """(transform, needs_pil) for one side (train or eval) of `resolve_transforms`' result."""
    from timm.data import create_transform

    if options["train"]:
        transform = create_transform(
            options["size"], is_training=True, scale=options["scale"], ratio=options["ratio"],
            hflip=options["hflip"], color_jitter=options["color_jitter"] or None,
            auto_augment=options["auto_augment"], interpolation=options["interpolation"], use_prefetcher=True)
        return transform, bool(options["auto_augment"])
    transform = create_transform(options["size"], is_training=False, crop_pct=options["crop_pct"],
                                 interpolation=options["interpolation"], use_prefetcher=True)
    return transform, False
