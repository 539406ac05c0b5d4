"""Shared bits of the benchmarks: a results table on the console and a JSON record on disk."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
LOAD_WARMUP_S = 8.0  # the load job reaches its training loop before the first measurement


def thread_env(threads: int) -> dict[str, str]:
    """A child's environment with its thread pools (OpenMP, MKL) capped at ``threads``."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextmanager
def training_load(out: Path, budget: str = "2h", extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """A training job on every core beside the measurements, for "busy machine" figures: started in its own session,
    given :data:`LOAD_WARMUP_S` to reach its loop, and killed with its process group at the end."""
    cmd = [sys.executable, "-m", "nas", "train", "--budget", budget, "--out", str(out), "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(
        [*cmd, *extra],
        cwd=REPO,
        env=thread_env(os.cpu_count() or 1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(LOAD_WARMUP_S)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


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


def report(
    name: str, title: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None, *, wide: bool = False
) -> Path:
    """Print ``rows`` as a table and write them (with the machine) to results/<name>.json. Records of more than 7
    fields are printed transposed, unless ``wide`` (many short records: one line each reads better)."""
    table = Table(title=title)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if wide or len(columns) <= 7:
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
    Console(width=max(160 if wide else 100, Console().width)).print(table)
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
