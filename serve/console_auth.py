"""The console's key check: when ``autonas serve`` has an API key, every console page and action needs it too.

A person signs in once through a form; the server answers with an HttpOnly, SameSite=Strict cookie holding an
HMAC of the key (never the key itself), so page scripts cannot read it and other sites cannot send it. A program
may send the same ``Authorization: Bearer`` header the model API takes. Without a key (loopback only, which
``autonas serve`` enforces) the console is open, but actions that change something (STOP) still need a header
only the console's own script sends, which a page on another site cannot add without a CORS preflight we refuse.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

COOKIE = "autonas_console"
ACTION_HEADER = "x-autonas-console"


def session_token(api_key: str) -> str:
    """The cookie's value: proves the key was given, cannot be turned back into it."""
    return hmac.new(api_key.encode(), b"autonas console session v1", hashlib.sha256).hexdigest()


def key_given(request: Request, api_key: str | None) -> bool:
    """True when no key is needed, or the request carries it (bearer header) or the console's session cookie."""
    if api_key is None:
        return True
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    if token and secrets.compare_digest(token.encode(), api_key.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and secrets.compare_digest(cookie.encode(), session_token(api_key).encode())


def check_key(given: str, api_key: str | None) -> bool:
    return api_key is None or secrets.compare_digest(given.encode(), api_key.encode())


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console/"
