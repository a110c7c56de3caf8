"""Stable digests of JSON-able values."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(value: Any, length: int = 16) -> str:
    """A stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
