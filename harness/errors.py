"""Errors a user can cause.

Every entry point catches :class:`UserError` and prints its message as one line with exit code 2
(:func:`harness.cli_support.user_errors`), so a bad flag or a bad file never ends in a traceback. Anything else
is a bug and may crash loudly.
"""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """Bad input from the person or the planner: the message says what is wrong and how to fix it."""


def describe_validation_error(err: ValidationError, source: str = "") -> str:
    """Turn a pydantic error into one readable line (field: reason; field: reason)."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(x) for x in item.get("loc", ()) if x != "__root__")
        msg = str(item.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    prefix = f"{source}: " if source else ""
    return prefix + "; ".join(parts)
