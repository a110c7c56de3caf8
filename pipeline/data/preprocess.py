"""How a trained classifier's evaluation sees an image, defined once for evaluation and serving and recorded
in its model.json: an in-memory set's images are converted and resized whole (`decode_images`, as they were
loaded); a streamed set's are decoded as the stream decodes them and given timm's eval transform (resize to
size / crop_pct, center crop), as its evaluation batches were."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def eval_preprocessing(in_chans: int, image_size: int, eval_transform: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of model.json's `preprocessing`: `eval_transform` is a streamed set's resolved eval transform
    (`pipeline.data.transforms.resolve_transforms(...)["eval"]`), None for an in-memory set."""
    if eval_transform is None:
        return {"kind": "resize", "in_chans": in_chans, "size": image_size}
    return {"kind": "timm_eval", "in_chans": in_chans, "size": eval_transform["size"],
            "interpolation": eval_transform["interpolation"], "crop_pct": eval_transform["crop_pct"]}


def _read(image) -> bytes | Any:
    """Encoded bytes of a file path or file-like object; a PIL image as it is."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if hasattr(image, "read"):
        return image.read()
    return image


def eval_images(images, preprocessing: dict[str, Any]):
    """uint8 (N, C, S, S) of image files, file-like objects, encoded bytes or PIL images, as evaluation saw them."""
    import torch
    from PIL import Image

    from pipeline.data.huggingface import decode_images
    from pipeline.data.stream import decode_image

    read = [_read(image) for image in images]
    if preprocessing["kind"] == "resize":
        opened = [Image.open(io.BytesIO(r)) if isinstance(r, (bytes, bytearray)) else r for r in read]
        return decode_images(opened, preprocessing["in_chans"], preprocessing["size"])
    from pipeline.data.transforms import build_transform

    transform, _ = build_transform({"train": False, **preprocessing})
    in_chans = preprocessing["in_chans"]
    decoded = [decode_image(r, in_chans, f"image {i}", "image") if isinstance(r, (bytes, bytearray))
               else _pil_tensor(r, in_chans) for i, r in enumerate(read)]
    return torch.stack([transform(image) for image in decoded])


def _pil_tensor(image, in_chans: int):
    import numpy as np
    import torch

    array = np.asarray(image.convert("L" if in_chans == 1 else "RGB"), dtype=np.uint8)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)
