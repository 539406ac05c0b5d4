"""Secrets never shown: API keys are masked in every text a person or a page may see (editor transcripts, screen
text read from screenshots, the web console).

A key is recognised two ways: by its value, taken from this process's environment (any variable whose name says
KEY, TOKEN or SECRET) plus any extra values the caller knows, so a tail of it (Claude Code prints a key's last 20
characters when it asks whether to use it) is masked as well as the whole; and by shape, for keys of providers we
know (``sk-...``, ``sk-ant-...``) that are in no variable here. The masked text keeps its length roughly but not a
single character of the secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

MASK = "••••••••"
MIN_FRAGMENT = 8  # a run of this many characters from a secret is enough to mask it (the tail a tool prints)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
_KEY_SHAPES = re.compile(r"\b(?:sk-ant-[A-Za-z0-9_\-]{8,}|sk-(?:proj-)?[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,})")
_TOKEN = re.compile(r"[A-Za-z0-9_\-\.+/=]{" + str(MIN_FRAGMENT) + ",}")


def secret_values(env: Mapping[str, str] | None = None, extra: Iterable[str | None] = ()) -> tuple[str, ...]:
    """The values to mask: every environment variable named like a secret (long enough to be one) and ``extra``."""
    source = os.environ if env is None else env
    found = {v for k, v in source.items() if _SECRET_NAME.search(k) and len(v) >= MIN_FRAGMENT}
    found.update(v for v in extra if v and len(v) >= MIN_FRAGMENT)
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every key-shaped string, every secret value and every run of :data:`MIN_FRAGMENT` or more
    characters of a secret value replaced by :data:`MASK`."""
    values = [s for s in secrets if len(s) >= MIN_FRAGMENT]
    for value in values:
        text = text.replace(value, MASK)
    text = _KEY_SHAPES.sub(MASK, text)
    if values:
        text = _TOKEN.sub(lambda m: _mask_fragment(m.group(0), values), text)
    return text


def _mask_fragment(token: str, values: list[str]) -> str:
    """A word of the text that shares a run of MIN_FRAGMENT characters with a secret (a tail, a head, a middle
    part) is masked whole."""
    for value in values:
        if token in value or _shares_run(token, value):
            return MASK
    return token


def _shares_run(token: str, value: str) -> bool:
    return any(token[i : i + MIN_FRAGMENT] in value for i in range(len(token) - MIN_FRAGMENT + 1))


def contains_secret(text: str, secrets: Iterable[str] = ()) -> bool:
    """True when :func:`redact` would change ``text``."""
    return redact(text, secrets) != text
