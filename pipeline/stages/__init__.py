"""Workflow stages, one module each: a module `pipeline/stages/NAME.py` registers the stage NAME."""
from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
    """Stage names, read from the module names without importing them (the spec validator uses this)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> None:
    importlib.import_module(f"{__name__}.{name}")
