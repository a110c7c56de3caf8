"""Checks of a model entry against the registered model itself (imports torch and timm: not for the pure schema)."""
from __future__ import annotations

import difflib
import inspect
from functools import lru_cache

from pipeline.errors import PipelineError

# Set by the pipeline from the data set at every build (models._factory.build_model).
RESERVED = ("num_classes", "in_chans")


def _named(function) -> tuple[set[str], bool]:
    """(names of a callable's keyword parameters, whether it takes **kwargs)."""
    params = inspect.signature(function).parameters.values()
    return ({p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"},
            any(p.kind == p.VAR_KEYWORD for p in params))


@lru_cache(maxsize=1)
def builder_keywords() -> frozenset[str]:
    """Arguments that timm.create_model and build_model_with_cfg take for themselves (pretrained_cfg, ...)."""
    import timm
    from timm.models import build_model_with_cfg

    names = _named(timm.create_model)[0] | _named(build_model_with_cfg)[0]
    return frozenset(names - {"model_name", "model_cls", "variant", "pretrained"})


@lru_cache(maxsize=None)
def model_keywords(name: str) -> frozenset[str] | None:
    """The keyword arguments of a registered model; None when its constructor takes **kwargs it passes on."""
    import timm
    import torch

    import models  # noqa: F401  (registers the zoo)

    names, var_kwargs = _named(timm.models.model_entrypoint(name))
    if not var_kwargs:
        return frozenset(names - {"pretrained"})
    # The entrypoint passes **kwargs on (through build_model_with_cfg) to the model class: find that class by
    # building the model on the meta device (no memory, no compute) and read its constructor.
    with torch.device("meta"):
        model_cls = type(timm.create_model(name))
    names, var_kwargs = _named(model_cls.__init__)
    return None if var_kwargs else frozenset(names)  # **kwargs: e.g. timm's RegNet, which builds its config from them


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """A one-line error for a `kwargs:` key of a model entry that the model does not take (the model would
    drop it without a word, or fail with a traceback when training starts)."""
    known = model_keywords(name)
    for key in kwargs:
        if key in RESERVED:
            raise PipelineError(f"model '{name}': kwargs.{key} is set by the pipeline from the data set: remove it")
        if known is None or key in known or key in builder_keywords():
            continue
        listed = sorted(known - set(RESERVED))
        close = difflib.get_close_matches(key, listed, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PipelineError(f"model '{name}' takes no keyword argument '{key}'{hint}; it takes: {', '.join(listed)}")


def check_models(context) -> None:
    """Every model entry's kwargs, before a training unit runs (imports torch and timm, so not in the
    offline `validate`)."""
    for entry in context.spec.models:
        check_model_kwargs(entry.name, entry.kwargs)
