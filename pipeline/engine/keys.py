"""Where a unit's key is computed: its stage, its identity and the code its result depends on, hashed.

A unit names the source files its result depends on (its stage declares them: the training harness and
loop, the data path, the model's own module...), and only those enter its key, as Prefect keys a task on
its own source: editing the CLI, the leaderboard or a benchmark leaves every cached unit valid, editing
the training loop or a model's module invalidates exactly the units that run it. Files are read as text,
so `pipeline status` plans without importing torch or timm. To rebuild every unit regardless, bump
`CACHE_EPOCH` (or run with `--rerun all`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline.hashing import digest, files_digest

ROOT = Path(__file__).resolve().parents[2]  # the project: pipeline/ and models/
CACHE_EPOCH = 1  # bump to invalidate every cached unit


@lru_cache(maxsize=None)
def _files(path: str) -> tuple[Path, ...]:
    full = ROOT / path
    if full.is_dir():
        return tuple(sorted(full.rglob("*.py")))
    if not full.is_file():
        raise FileNotFoundError(f"unit code path {path} does not exist")
    return (full,)


@lru_cache(maxsize=None)
def code_digest(paths: tuple[str, ...]) -> str:
    """A hash of the named files and folders (paths relative to the project), with the cache epoch."""
    files = {f for path in paths for f in _files(path)}
    return digest({"epoch": CACHE_EPOCH, "files": files_digest(files, ROOT)}, 12)


_IMPORT = re.compile(r"^from \.(\w+) import", re.M)


@lru_cache(maxsize=None)
def model_code(name: str) -> tuple[str, ...]:
    """The source a model of the zoo is built from: the module registering `name` and the zoo modules it
    imports, with the factory; a timm model's is timm's release, named by its version."""
    for path in sorted((ROOT / "models").glob("*.py")):
        text = path.read_text()
        if re.search(rf"^def {re.escape(name)}\(", text, re.M):
            local = {f"models/{m}.py" for m in _IMPORT.findall(text)}
            return tuple(sorted({f"models/{path.name}", "models/_factory.py", *local}))
    return ("models/_factory.py", f"timm=={_version('timm')}")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def unit_code(paths: tuple[str, ...]) -> str:
    """What a unit's key records of its code: the digest of its files, plus the releases it names
    (`timm==1.0.31`), which are versions rather than files."""
    files = tuple(p for p in paths if "==" not in p)
    releases = sorted(p for p in paths if "==" in p)
    return "+".join([code_digest(files), *releases])


def unit_key(stage: str, identity, code: tuple[str, ...]) -> str:
    """A unit's content key: a FINISHED run tagged with it is the unit's cached result."""
    return digest({"stage": stage, "identity": identity, "code": unit_code(code)}, 24)
