"""Options that apply on one data path only, refused in one line on the others (the spec's validation
and the driver's worker config both ask here)."""
from __future__ import annotations

from pipeline.data import dataset_info, is_streaming
from pipeline.errors import PipelineError


def check_options(data, train) -> None:
    """Raise a one-line PipelineError for an option of `data` (DataConfig) or `train` (TrainConfig) that the
    data set's path would ignore or cannot run (an option left at its default is never refused)."""
    info = dataset_info(data)
    if is_streaming(data):
        for name in ("classes", "per_class", "skip_unreadable"):
            if getattr(data, name) not in (None, False):
                raise PipelineError(f"data.{name} applies to in-memory data sets; '{data.name}' streams: remove "
                                    f"data.{name}, or set data.streaming: false where the set fits in memory")
        if data.max_shift != type(data).model_fields["max_shift"].default:
            raise PipelineError(f"data.max_shift applies to in-memory data sets; '{data.name}' streams and is "
                                "augmented by train.transforms (scale, ratio, hflip): remove data.max_shift")
        in_chans = data.in_chans or info.in_chans or 3
        for name in ("color_jitter", "auto_augment"):
            if in_chans == 1 and getattr(train.transforms, name):
                raise PipelineError(f"train.transforms.{name} needs 3-channel images and data set '{data.name}' "
                                    f"has 1 channel: remove it, or set data.in_chans: 3")
    elif train.transforms != type(train.transforms)():
        raise PipelineError(f"train.transforms applies to streamed data sets; '{data.name}' loads in memory and "
                            "is augmented by data.augment and data.max_shift: remove train.transforms")
    if info.source == "idx":
        for name, native in (("image_size", info.image_size), ("in_chans", info.in_chans)):
            if getattr(data, name) not in (None, native):
                raise PipelineError(f"data.{name} does not apply to '{data.name}', read from its IDX files at "
                                    f"{info.image_size}x{info.image_size}, {info.in_chans} channel: remove data.{name}")
    if train.scheduler == "plateau" and not data.val_fraction:
        raise PipelineError("train.scheduler plateau lowers the lr when validation top-1 stops improving, and "
                            "data.val_fraction is 0: set data.val_fraction above 0, or choose another scheduler")
