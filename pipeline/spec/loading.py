"""Reading a spec: YAML from a file, `--set` overrides, `--model`/`--skip` selection, one-line errors."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.spec.hints import _first_error
from pipeline.spec.schema import Spec


def _unshared(node: Any) -> Any:
    """A copy in which no two places share a mapping or list: YAML anchors (`train: *vgg`) alias one object,
    and an override of one model's field must not change the others (copy.deepcopy keeps the aliasing)."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


def _entry_names(entry: Any) -> tuple[str, ...]:
    """What an entry is addressed by: its model's name, and its id where it has one."""
    if not isinstance(entry, dict):
        return (str(entry),)
    return tuple(str(entry[key]) for key in ("name", "id") if entry.get(key) is not None)


def _matching(names: list[tuple[str, ...]], pattern: str, what: str) -> list[int]:
    """Indices of the entries a shell-style pattern matches (by model name or id); a one-line error listing them
    when none does."""
    indices = [i for i, aliases in enumerate(names) if any(fnmatch.fnmatchcase(n, pattern) for n in aliases)]
    if not indices:
        listed = ", ".join(dict.fromkeys(n for aliases in names for n in aliases))
        raise PipelineError(f"{what}'{pattern}' matches no model of the spec; its models: {listed}")
    return indices


def _set_path(node: Any, parts: list[str], value: Any) -> None:
    """Apply one `a.b.c=value` override. A list item is addressed by its index (models.0.lr) or, in the models
    list, by a model name or shell-style pattern (models.vit*.train.lr) that sets every model it matches."""
    head, *rest = parts
    if isinstance(node, list):
        try:
            indices = [range(len(node))[int(head)]]
        except ValueError:
            indices = _matching([_entry_names(entry) for entry in node], head, "")
        for index in indices:
            if not rest:
                node[index] = value
                continue
            if isinstance(node[index], str):  # a model given by name only: models.0.train.lr=...
                node[index] = {"name": node[index]}
            _set_path(node[index], rest, value)
    elif not rest:
        node[head] = value
    else:
        _set_path(node.setdefault(head, {}), rest, value)


def _select_models(tree: dict, only: Sequence[str], skip: Sequence[str]) -> None:
    """Keep the spec's models matching an `only` pattern (all when none) and none matching a `skip` pattern;
    each keeps its own recipe. Patterns are shell-style (`vgg*_bn_cifar`) and must each match a model."""
    entries = tree.get("models")
    if not isinstance(entries, list):
        return  # validation names the problem
    names = [_entry_names(entry) for entry in entries]
    kept = set(range(len(entries))) if not only else {i for p in only for i in _matching(names, p, "--model ")}
    kept -= {i for p in skip for i in _matching(names, p, "--skip ")}
    tree["models"] = [entry for i, entry in enumerate(entries) if i in kept]
    if not tree["models"]:
        raise PipelineError("--model/--skip leave no model to run: loosen them")


def _overridden(tree: dict, overrides: Sequence[str], only: Sequence[str], skip: Sequence[str]) -> dict:
    """A copy of the tree with the `--set` overrides applied and the models selected."""
    tree = _unshared(tree)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise PipelineError(f"override '{override}' is not KEY=VALUE: write e.g. --set train.epochs=1")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PipelineError(f"override '{override}': the value {raw!r} is not valid YAML "
                                f"({getattr(exc, 'problem', None) or exc}): write a number, true/false, [a, b], "
                                "{key: value} or a quoted string") from None
        try:
            _set_path(tree, key.strip().split("."), value)
        except PipelineError as exc:
            raise PipelineError(f"override '{override}': {exc}") from None
        except (ValueError, IndexError, TypeError, AttributeError):
            raise PipelineError(f"override '{override}': '{key}' does not name a field of the spec") from None
    if only or skip:
        _select_models(tree, only, skip)
    return tree


def _culprit(tree: dict, overrides: Sequence[str], only: Sequence[str], skip: Sequence[str], error: str) -> str | None:
    """The first override from which on the spec fails with `error` (None when the file alone does)."""
    for count in range(len(overrides) + 1):
        try:
            Spec.model_validate(_overridden(tree, overrides[:count], only, skip))
        except ValidationError as exc:
            if _first_error(exc) == error:
                return overrides[count - 1] if count else None
        except PipelineError:
            pass  # --model/--skip patterns that only match once the overrides are in
    return None


def parse_spec(tree: Any, source: str = "spec", overrides: Sequence[str] = (),
               only: Sequence[str] = (), skip: Sequence[str] = ()) -> Spec:
    """Validate a spec tree after `--set` overrides (models by index in the file, name or pattern) and
    model selection (--model / --skip). A validation error names the override that brought it in."""
    if not isinstance(tree, dict):
        raise PipelineError(f"{source}: an experiment spec must be a YAML mapping (name:, data:, models:, ...)")
    try:
        return Spec.model_validate(_overridden(tree, overrides, only, skip))
    except ValidationError as exc:
        error = _first_error(exc)
    culprit = _culprit(tree, overrides, only, skip, error) if overrides else None
    raise PipelineError(f"override '{culprit}': {error}" if culprit else f"{source}: {error}")


def load_spec(path: str | Path, overrides: Sequence[str] = (), only: Sequence[str] = (),
              skip: Sequence[str] = ()) -> Spec:
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))
        raise PipelineError(f"spec {path} is a folder, not a file: give the path of an experiment YAML"
                            + (f" in it ({', '.join(found[:5])})" if found else " (see experiments/)"))
    if not path.is_file():
        raise PipelineError(f"spec file {path} not found: give the path of an experiment YAML (see experiments/)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
                            "give a YAML file, saved as UTF-8") from None
    except OSError as exc:
        raise PipelineError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PipelineError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_spec(tree, str(path), overrides, only, skip)
