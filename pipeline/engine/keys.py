"""The code a unit's result depends on, hashed into its key."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


SOURCE_PACKAGES = ("pipeline", "models")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the project's own source files: the same in a checkout and in a
    Ray Job's working directory, where `.git` is not uploaded."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("vision-pipeline")
    except PackageNotFoundError:
        package = "0"
    sha = hashlib.sha256()
    for package_dir in SOURCE_PACKAGES:
        for path in sorted((ROOT / package_dir).rglob("*.py")):
            sha.update(path.relative_to(ROOT).as_posix().encode())
            sha.update(path.read_bytes())
    return f"{package}+{sha.hexdigest()[:12]}"
