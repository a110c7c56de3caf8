"""The names a spec may use: timm's registered models (with the zoo), timm's optimizers, open_clip's models.

Listing them means importing torch, timm and open_clip (several seconds), so `pipeline validate` and
`pipeline status` read them from a small cache file, written on first use and keyed by the versions of timm
and open_clip and by the project's own source (the zoo registers models there). A name missing from the
cache is looked up for real before it is called unknown.
"""
from __future__ import annotations

import json
import os
import pkgutil
from functools import lru_cache
from pathlib import Path

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vision-pipeline"


def _cache_key() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.hashing import digest, files_digest

    versions = {}
    for package in ("timm", "open-clip-torch", "torch"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    zoo = Path(__file__).resolve().parents[2] / "models"  # the zoo registers its models in timm's registry
    return digest({"versions": versions, "zoo": files_digest(zoo.glob("*.py"), zoo)}, 16)


def _list_all() -> dict[str, list[str]]:
    import timm
    from timm.optim import list_optimizers

    import models  # noqa: F401  (registers the zoo in timm's registry)
    from models.clip import model_names as clip_models

    return {"models": sorted(timm.list_models()), "optimizers": sorted(list_optimizers()),
            "clip_models": sorted(clip_models())}


@lru_cache(maxsize=1)
def _names() -> dict[str, frozenset[str]]:
    path = CACHE_DIR / f"names-{_cache_key()}.json"
    try:
        listed = json.loads(path.read_text())
    except (OSError, ValueError):
        listed = _list_all()
        try:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(listed))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: the names are listed again next time
    return {kind: frozenset(values) for kind, values in listed.items()}


@lru_cache(maxsize=None)
def _fresh() -> dict[str, frozenset[str]]:
    return {kind: frozenset(values) for kind, values in _list_all().items()}


def known(kind: str, name: str) -> bool:
    """Whether `name` is a known model / optimizer / clip_model; the cache first, then a real lookup."""
    return name in _names()[kind] or name in _fresh()[kind]


def names(kind: str) -> frozenset[str]:
    return _names()[kind]


def stages() -> list[str]:
    """Stage names: the modules of `pipeline/stages/`, listed without importing them (each is a plug-in the
    workflow engine loads by name)."""
    folder = Path(__file__).resolve().parents[1] / "stages"
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_"))
