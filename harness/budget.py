"""Budgets written the way people say them: ``90s``, ``10m``, ``1.5h``, ``2M`` tokens (``2Mtok``), and the clock a
worker's wall-clock cap counts on (:func:`process_start`)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from harness.errors import UserError

_TIME = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_COUNT = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    tokens: int | None = None

    def describe(self) -> str:
        return f"{self.seconds:g}s" if self.seconds is not None else f"{self.tokens:,} tokens"


def parse_budget(text: str) -> Budget:
    """Seconds (s, m, h, d) or tokens (``tok`` suffix, optionally k/M/G before it)."""
    m = _PATTERN.match(text.lower())
    if not m:
        raise UserError(f"cannot read budget {text!r}: use e.g. 60s, 10m, 2h or 500ktok, 2Mtok")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise UserError(f"budget must be positive, got {text!r}")
    if unit in _TIME:
        return Budget(seconds=value * _TIME[unit])
    if unit.endswith("tok") and unit[:-3] in _COUNT:
        tokens = int(value * _COUNT[unit[:-3]])
        if tokens <= 0:
            raise UserError(f"budget must be at least one token, got {text!r}")
        return Budget(tokens=tokens)
    raise UserError(f"unknown budget unit in {text!r}: use s, m, h, d for time or tok, ktok, Mtok for tokens")


def process_start() -> float:
    """When this process started, on the ``time.monotonic()`` clock: a worker's wall cap counts from here, so the
    interpreter's start and the imports (seconds on a loaded machine) are inside the cap the agent set. Linux reads
    it from /proc; elsewhere (or if /proc is unreadable) it is now."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces: fields follow its ')'
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks after boot
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 86_400 * 365 else now
