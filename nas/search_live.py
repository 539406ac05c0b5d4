"""What a person watching a search sees: a live table (counts, running trials, the last events), and ``log.txt``.

Every event goes to the run folder's ``log.txt`` whether or not the table is shown (``--quiet``), so an unattended
search leaves the same trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.live import Live
from rich.table import Table

from harness.run_files import append_log

SHOWN_EVENTS = 12  # the table's last lines


@dataclass(frozen=True)
class LiveStatus:
    elapsed_s: float
    counts: dict[str, int]  # results.tsv's rows counted by stage and status ("stage1_ok": 3)
    running: list[tuple[int, int]]  # (stage, number) of the trials on workers


class LiveView:
    """``note`` events; between ``start`` and ``stop`` (when enabled) a table is redrawn on each ``refresh``.

    The status is passed as a function, called only when a table is shown: counting the trials reads both studies,
    which a ``--quiet`` search need not pay for every second."""

    def __init__(self, out: Path, title: str, enabled: bool):
        self.out, self.title, self.enabled = out, title, enabled
        self.events: deque[str] = deque(maxlen=SHOWN_EVENTS)
        self._live: Live | None = None

    def note(self, line: str) -> None:
        self.events.append(line)
        append_log(self.out, line)

    def _table(self, status: LiveStatus) -> Table:
        table = Table(title=f"{self.title} {status.elapsed_s:.0f}s", show_header=False, expand=False)
        table.add_row("counts", ", ".join(f"{k}={v}" for k, v in sorted(status.counts.items())) or "-")
        table.add_row("running", ", ".join(f"s{s}#{n}" for s, n in status.running) or "-")
        for line in self.events:
            table.add_row("", line)
        return table

    def start(self, status: Callable[[], LiveStatus]) -> None:
        if self.enabled and self._live is None:
            self._live = Live(self._table(status()), refresh_per_second=2, transient=False)
            self._live.__enter__()

    def refresh(self, status: Callable[[], LiveStatus]) -> None:
        if self._live is not None:
            self._live.update(self._table(status()))

    def stop(self, status: Callable[[], LiveStatus]) -> None:
        if self._live is not None:
            self._live.update(self._table(status()))
            self._live.__exit__(None, None, None)
            self._live = None
