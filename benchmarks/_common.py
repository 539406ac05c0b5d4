"""Shared bits of the benchmarks: a results table on the console and a JSON record on disk."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return info


def report(name: str, title: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """Print ``rows`` as a table and write them (with the machine) to results/<name>.json."""
    table = Table(title=title)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if len(columns) <= 7:
        for c in columns:
            table.add_column(c, justify="right")
        for r in rows:
            table.add_row(*(_fmt(r.get(c)) for c in columns))
    else:  # wide records read better transposed: one line per field
        table.add_column("field")
        for i in range(len(rows)):
            table.add_column(str(i + 1) if len(rows) > 1 else "value", justify="right")
        for c in columns:
            table.add_row(c, *(_fmt(r.get(c)) for r in rows))
    Console(width=max(100, Console().width)).print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}, indent=2))
    Console().print(f"wrote {path}")
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)
