"""What a valid run or model id is: one definition for the model API and the console.

An id becomes a path (``RUNS/<id>``), so it is checked before any path is built from it: ASCII letters, digits and
``._-``, starting with a letter or digit, at most 128 characters, and never ``..`` (no look-alike unicode, no
separators, no parent folder).
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_id(text: str, pattern: re.Pattern[str] = ID_PATTERN) -> bool:
    """``text`` is all of ``pattern`` (fullmatch: a trailing newline is refused), ASCII, without ``..``."""
    return text.isascii() and pattern.fullmatch(text) is not None and ".." not in text
