"""The run's progress lines on stderr (one console, so the nodes, the report and the search resume print alike)."""

from __future__ import annotations

from rich.console import Console

PROGRESS = Console(stderr=True, highlight=False)
