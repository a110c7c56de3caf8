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
def model_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of a registered model; None when its constructor takes **kwargs it passes on."""
    import timm
    import torch

    import models  # noqa: F401  (registers the zoo)

    entrypoint = timm.models.model_entrypoint(name)
    if not _named(entrypoint)[1]:
        return _parameters(entrypoint)
    # The entrypoint passes **kwargs on (through build_model_with_cfg) to the model class: find that class by
    # building the model on the meta device (no memory, no compute) and read its constructor.
    with torch.device("meta"):
        model_cls = type(timm.create_model(name))
    # **kwargs: e.g. timm's RegNet, which builds its config from them
    return None if _named(model_cls.__init__)[1] else _parameters(model_cls.__init__)


def _parameters(function) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "pretrained")}


def model_keywords(name: str) -> frozenset[str] | None:
    """The keyword arguments of a registered model; None when its constructor takes **kwargs it passes on."""
    parameters = model_parameters(name)
    return None if parameters is None else frozenset(parameters)


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
    for key, value in kwargs.items():
        if (parameter := (model_parameters(name) or {}).get(key)) is not None:
            _check_type(name, key, value, parameter)


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}


def _accepted(annotation) -> tuple | None:
    """What YAML values an annotation takes: (types, literal values), or None when it cannot be told (a
    callable, a module class, a string annotation)."""
    import typing

    if annotation in _SCALARS:
        return _SCALARS[annotation], ()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return (), args
    if origin in (tuple, list, typing.Sequence) or annotation in (tuple, list):
        return (list, tuple), ()
    if origin is typing.Union or type(annotation).__name__ == "UnionType":  # Optional[int], int | None
        parts = [_accepted(arg) for arg in args]
        if any(part is None for part in parts):
            return None
        return tuple(t for types, _ in parts for t in types), tuple(v for _, values in parts for v in values)
    return None


def _check_type(name: str, key: str, value, parameter: inspect.Parameter) -> None:
    """A kwarg of the wrong type (`depth: four`) is refused here, not by the model inside the run: by the
    parameter's annotation, else by the type of its default."""
    annotation, default = parameter.annotation, parameter.default
    unannotated = annotation is parameter.empty or isinstance(annotation, str)  # a string: not resolved here
    accepted = None if unannotated else _accepted(annotation)
    if unannotated and default is not None and type(default) in _SCALARS:
        accepted = _SCALARS[type(default)], ()
    if accepted is None:
        return
    types, literals = accepted
    if value in literals and not isinstance(value, bool) or \
            isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return
    wanted = [t.__name__ if t is not type(None) else "null" for t in dict.fromkeys(types)] + \
        [repr(v) for v in literals]
    raise PipelineError(f"model '{name}': kwargs.{key} is {value!r} ({type(value).__name__}), it takes "
                        f"{' or '.join(wanted)} (default {default!r}): fix kwargs.{key} in the spec")


def check_models(context) -> None:
    """Every model entry's kwargs, before a training unit runs (imports torch and timm, so not in the
    offline `validate`)."""
    for entry in context.spec.models:
        check_model_kwargs(entry.name, entry.kwargs)
        if entry.freeze is not None or entry.layer_decay is not None or entry.head_lr is not None:
            check_finetune_options(entry)


def check_finetune_options(entry) -> None:
    """freeze, layer_decay and head_lr against the model (built on the meta device): one line where one cannot
    apply (no classifier timm names, no group_matcher)."""
    import timm
    import torch

    import models  # noqa: F401  (registers the zoo)
    from pipeline.training.finetune import check_finetune

    with torch.device("meta"):
        model = timm.create_model(entry.name, **entry.kwargs)
    if entry.head_lr is not None and not (hasattr(model, "get_classifier") and list(model.get_classifier().parameters())):
        raise PipelineError(f"models[{entry.name}].head_lr: model '{entry.name}' has no classifier that timm's "
                            "get_classifier() names: remove head_lr")
    check_finetune(model, entry.name, entry.freeze, entry.layer_decay)
