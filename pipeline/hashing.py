"""Stable digests: of JSON-able values (unit keys, data fingerprints) and of source files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def digest(value: Any, length: int = 16) -> str:
    """A stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def files_digest(files, root: Path) -> str:
    """A hash of files' paths (relative to `root`) and contents, in path order."""
    sha = hashlib.sha256()
    for file in sorted(files):
        sha.update(file.relative_to(root).as_posix().encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()
