"""The model factory beside the zoo: a zoo or timm model built for a data set, and its parameters and
multiply-accumulates, counted the same way for every architecture."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of a batch of one, in eval mode.

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate (convs, matmuls, attention).
    Runs on the meta device where the model allows it, so large models cost no compute.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *input_shape), device=device))
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)


def build_model(name: str, num_classes: int, in_chans: int, device: str | torch.device = "cpu", **kwargs):
    import timm

    import models  # noqa: F401  (registers the zoo)

    with torch.device(device):
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def model_complexity(name: str, num_classes: int, in_chans: int, image_size: int, **kwargs) -> dict[str, float]:
    """{'param_count': millions, 'gmacs': GMACs per image} for a registered model."""
    model = build_model(name, num_classes, in_chans, "meta", **kwargs)
    try:
        macs = count_macs(model, (in_chans, image_size, image_size))
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count on the CPU instead
        model = build_model(name, num_classes, in_chans, "cpu", **kwargs)
        macs = count_macs(model, (in_chans, image_size, image_size))
    return {"param_count": param_count(model) / 1e6, "gmacs": macs / 1e9}
