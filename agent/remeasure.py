"""A fresh latency measurement of a finished experiment's saved model, for a result too noisy to judge.

It runs like the experiment's worker: a subprocess in the workspace with the worker's environment (the
workspace's copy of the code first on the import path, so a model built by edited code is timed with that
code) and the same confinement, writing only into the experiment's run folder. The timing itself is the
harness's ``measure_latency``, as in training.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.progress import PROGRESS
from harness.errors import UserError
from sandbox.confine import Confinement, ConfinementUnavailable
from sandbox.runner import run_limited
from sandbox.safe_files import UnsafeFile, read_json_object
from sandbox.workspace import Workspace

SCRIPT = """
import json, sys
import torch
from harness.metrics import measure_latency
from nas.run_folder import load_trained_model
run_dir, out, device = sys.argv[1], sys.argv[2], sys.argv[3]
model, _ = load_trained_model(run_dir)
if device.startswith("cuda") and torch.cuda.is_available():
    model = model.to(device)
with open(out, "w") as fh:
    json.dump(measure_latency(model).as_metrics(), fh)
"""

TIMEOUT_S = 300.0


def remeasure_command(run_dir: Path, out_file: Path, device: str) -> list[str]:
    """The command (run in the workspace) that times the model in ``run_dir`` and writes its latency metrics."""
    return [sys.executable, "-c", SCRIPT, str(run_dir), str(out_file), device]


def remeasure_latency(
    ws: Workspace,
    out: Path,
    device: str,
    attempt: int,
    memory_mb: int | None,
    env: dict[str, str],
    confinement: Callable[[], Confinement | None],
) -> dict[str, Any] | None:
    """A fresh latency measurement of the model in ``out`` (relative to the workspace), written beside it as
    ``latency_remeasure_<attempt>.json``; None when it fails (the judge goes on with the sessions it has)."""
    result = out / f"latency_remeasure_{attempt}.json"
    try:
        outcome = run_limited(
            remeasure_command(out, result, device),
            ws.root,
            ws.root / out / "latency_remeasure.log",
            timeout_s=TIMEOUT_S,
            memory_mb=memory_mb,
            env=env,
            confinement=confinement(),
        )
        fresh = read_json_object(ws.root / result) if outcome.ok else None
    except (ConfinementUnavailable, UserError, UnsafeFile):
        return None
    PROGRESS.print(
        f"     [dim]latency re-measured ({attempt}): "
        f"{(fresh or {}).get('latency_ms_p50', float('nan')):.3f} ms/token p50[/]"
    )
    return fresh
