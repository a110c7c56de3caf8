"""Measuring a network for the lecture's tables: its layers' output shapes (on the meta device, no memory),
its depth in weight layers along the longest path, and its forward pass's parameters and MACs."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules import pooling

from models._factory import build_model

POOLS = (pooling._MaxPoolNd, pooling._AvgPoolNd, pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd)


# Layers whose outputs are the feature maps a forward pass keeps (the lecture's "memory"): activations,
# normalization and dropout are left out, as they run in place or fuse into the layer before at inference.
FEATURE_LAYERS = (nn.Conv2d, nn.Linear, *POOLS)


def input_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) the model was defined for: its timm pretrained config."""
    import timm

    import models  # noqa: F401  (registers the zoo)

    cfg = timm.models.get_pretrained_cfg(name)
    return tuple(cfg.input_size) if cfg is not None else (3, 224, 224)


def num_classes_of(name: str) -> int:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return (cfg.num_classes or 1000) if cfg is not None else 1000


def meta_model(name: str, **kwargs) -> nn.Module:
    shape = input_shape(name)
    return build_model(name, kwargs.pop("num_classes", num_classes_of(name)), shape[0], "meta", **kwargs).eval()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def record_outputs(model: nn.Module, shape: tuple[int, ...], kinds: tuple[type, ...],
                   skip_noops: bool = False) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape without the batch axis) of each `kinds` layer, in forward order.

    With `skip_noops`, parameter-free layers that return their input's shape (an adaptive pool that
    is already at its size, a global pool of a 1x1 map) are left out: they create no new feature map.
    """
    records = []

    def hook(name):
        def record(module, args, output):
            if skip_noops and not any(True for _ in module.parameters()) and output.shape == args[0].shape:
                return
            records.append((name, module, tuple(output.shape[1:])))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *shape), device=_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return records


def _takes_weight(node) -> bool:
    """Does this autograd node read a parameter directly (conv weight) or through a transpose (linear)?"""
    for child, _ in node.next_functions:
        if child is None:
            continue
        if type(child).__name__ == "AccumulateGrad":
            return True
        if type(child).__name__.startswith("TBackward") and any(
                c is not None and type(c).__name__ == "AccumulateGrad" for c, _ in child.next_functions):
            return True
    return False


WEIGHT_OPS = ("ConvolutionBackward", "AddmmBackward", "MmBackward", "LinearBackward")


def longest_weight_path(output: torch.Tensor) -> int:
    """Convolution and fully connected layers on the longest path of the autograd graph behind `output`.

    The lecture's layer count ("22 layers", "152 layers": parallel branches count once). torch has
    no such count; the walk is iterative because deep nets exceed Python's recursion limit.
    """
    depth: dict[Any, int] = {}
    stack = [(output.grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if node in depth:
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if expanded:
            own = type(node).__name__.startswith(WEIGHT_OPS) and _takes_weight(node)
            depth[node] = max((depth[c] for c in children), default=0) + int(own)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in depth)
    return depth[output.grad_fn]


def forward_profile(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(activation values, weight layers) of one image's forward pass in eval mode (auxiliary heads off).

    Activation values: the input and every feature map (outputs of FEATURE_LAYERS, recorded by forward
    hooks). Weight layers: `longest_weight_path`. On the meta device both cost no compute.
    """
    values = [math.prod(shape)]

    def record(module, args, output):
        if any(True for _ in module.parameters()) or output.shape != args[0].shape:  # skip no-op pools
            values.append(output[0].numel())

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, FEATURE_LAYERS)]
    try:
        output = model.eval()(torch.zeros((1, *shape), device=_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return sum(values), longest_weight_path(output)


def shape_text(shape: tuple[int, ...]) -> str:
    """The lecture's notation: HxWxC for feature maps, the width for vectors, NxD for token sequences."""
    if len(shape) == 3:
        channels, height, width = shape
        return f"{height}x{width}x{channels}"
    return "x".join(str(s) for s in shape)
