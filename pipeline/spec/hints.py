"""One-line messages for spec errors: close matches of a misspelled name, the first validation error."""
from __future__ import annotations

import difflib

from pydantic import ValidationError


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def one_of(what: str, value: str, known) -> str:
    """`value` if it is among `known`, else the one-line error naming close matches and every known value."""
    if value not in known:
        raise ValueError(f"unknown {what} '{value}'{_did_you_mean(value, known)}; known: {', '.join(known)}")
    return value


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}': remove it or check its spelling"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return f"{where}: {message}" if where else message
    return f"{where}: {message} (got {error.get('input')!r})"
