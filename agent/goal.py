"""Reading the one-line goal: what to optimise and the hard limits it states."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from harness.errors import UserError

_MB = re.compile(r"(\d+(?:\.\d+)?)\s*(mb|mib|megabytes?)\b", re.IGNORECASE)
_KB = re.compile(r"(\d+(?:\.\d+)?)\s*(kb|kib|kilobytes?)\b", re.IGNORECASE)
_MS = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|milliseconds?)\b", re.IGNORECASE)
_PARAMS = re.compile(r"(\d+(?:\.\d+)?)\s*([km])\s*(params|parameters)\b", re.IGNORECASE)
_TOPICS = (
    "model",
    "lm",
    "language",
    "code",
    "python",
    "bpb",
    "bits",
    "byte",
    "size",
    "mb",
    "latency",
    "ms",
    "token",
    "fast",
    "small",
    "tiny",
    "best",
    "search",
    "architecture",
    "transformer",
    "quality",
    "loss",
)


class Goal(BaseModel):
    """The parsed goal. Limits are hard: an experiment that breaks one is never kept."""

    model_config = ConfigDict(frozen=True)

    text: str
    max_mb: float | None = None  # int8 bytes / 10^6
    max_latency_ms: float | None = None  # per-token decode p50 on the run's machine
    max_params: int | None = None


def parse_goal(text: str) -> Goal:
    words = re.findall(r"[A-Za-z]+", text or "")
    if len(words) < 3:
        raise UserError('the goal is empty or too short: say what to find, e.g. "find the best code LM under 8 MB"')
    lowered = {w.lower() for w in words}
    if not lowered & set(_TOPICS) and not _MB.search(text) and not _MS.search(text):
        raise UserError(
            f"cannot tell what to optimise from the goal {text!r}: mention the model, its size (MB) or latency (ms)"
        )
    mb = _MB.search(text)
    kb = _KB.search(text)
    ms = _MS.search(text)
    params = _PARAMS.search(text)
    max_mb = float(mb.group(1)) if mb else (float(kb.group(1)) / 1000 if kb else None)
    max_params = int(float(params.group(1)) * (1e3 if params.group(2).lower() == "k" else 1e6)) if params else None
    for value, what in ((max_mb, "size"), (float(ms.group(1)) if ms else None, "latency")):
        if value is not None and value <= 0:
            raise UserError(f"the goal's {what} limit must be positive")
    return Goal(
        text=text.strip(), max_mb=max_mb, max_latency_ms=float(ms.group(1)) if ms else None, max_params=max_params
    )
