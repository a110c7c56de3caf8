"""Fine-tuning on a worker: which parameters are frozen, and the optimizer's parameter groups with timm's
layer-wise lr decay and a learning rate of the classifier's own. The driver checks beforehand that a model
takes the options (`check_finetune`), so a worker never meets a model that cannot.

The head is what timm's `get_classifier()` returns; layer groups are timm's `group_matcher` (coarse for
freezing: stem, then stages; fine for layer decay, as `create_optimizer_v2` does)."""
from __future__ import annotations

import torch.nn as nn

from pipeline.errors import PipelineError


def head_names(model: nn.Module) -> set[str]:
    """The names of the classifier's parameters (`get_classifier()`), as `named_parameters` gives them."""
    head = model.get_classifier()
    params = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return {name for name, p in model.named_parameters() if id(p) in params}


def coarse_groups(model: nn.Module) -> list[list[str]]:
    """The model's parameter names by timm's coarse layer groups (stem, stages, ...), in order."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[key] for key in sorted(groups)]


def check_finetune(model: nn.Module, name: str, freeze, layer_decay) -> None:
    """A one-line refusal of an option the model cannot take (`model` may be on the meta device)."""
    if freeze is not None and (not hasattr(model, "get_classifier") or not head_names(model)):
        raise PipelineError(f"models[{name}].freeze: model '{name}' has no classifier that timm's get_classifier() "
                            "names: remove freeze")
    for option, value in (("layer_decay", layer_decay), ("freeze", freeze if isinstance(freeze, int) else None)):
        if value is not None and not hasattr(model, "group_matcher"):
            raise PipelineError(f"models[{name}].{option}: model '{name}' has no timm group_matcher() that orders its "
                                f"layers: remove {option}")
    if isinstance(freeze, int):
        groups, head = coarse_groups(model), head_names(model)
        first_head = next((i for i, group in enumerate(groups) if set(group) & head), len(groups))
        if freeze >= first_head:
            raise PipelineError(f"models[{name}].freeze: {freeze} of the {len(groups)} layer groups of '{name}' "
                                f"would freeze its classifier: give at most {first_head - 1}, or backbone")


def freeze(model: nn.Module, what) -> list[nn.Module]:
    """Freeze the backbone ("backbone") or the first `what` coarse layer groups; returns the batch-norm layers
    wholly frozen, which stay in eval mode while the rest trains (their running statistics stay the source's)."""
    if what is None:
        return []
    if what == "backbone":
        keep = head_names(model)
        frozen = {n for n, _ in model.named_parameters() if n not in keep}
    else:
        frozen = {n for group in coarse_groups(model)[:what] for n in group}
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None, head_lr_scale: float | None):
    """timm's parameter groups (weight decay; layer decay's `lr_scale` per layer), the classifier's parameters in
    groups of their own whose `lr_scale` is `head_lr_scale` where it is given. timm's schedulers set each
    group's lr to the scheduled lr times its `lr_scale`."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    if layer_decay is not None:
        groups = param_groups_layer_decay(model, weight_decay, no_decay, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_decay)
    if head_lr_scale is None:
        return groups
    head = {id(model.get_parameter(n)) for n in head_names(model)}
    split = []
    for group in groups:
        for in_head in (False, True):
            params = [p for p in group["params"] if (id(p) in head) == in_head]
            if params:
                scale = head_lr_scale if in_head else group.get("lr_scale", 1.0)
                split.append({**group, "params": params, "lr_scale": scale})
    return split
