"""Why experiment budgets are counted in tokens: the same config and seed, trained three times under a token
budget and three times under a wall-clock budget of about the same length, once on an idle machine and twice
while another training job runs beside it.

A token budget trains the same steps on the same batches whatever the load, so its val_bpb repeats exactly;
a wall-clock budget trains fewer steps when the machine is busy, so its val_bpb moves with the load. The
wall-clock budget is the idle token run's training time, so both kinds train about as long when idle. The
measured job runs at one thread (OMP_NUM_THREADS=1); the load job uses every core.

    python benchmarks/budget_spread.py [--tokens 120ktok] [--eval-bytes 65536]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, report, thread_env, training_load


def train(out: Path, budget: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measured training of the default architecture in its own process; its metrics.json plus the process' wall."""
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "train",
        "--budget",
        budget,
        "--out",
        str(out),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--eval-bytes",
        str(args.eval_bytes),
        "--quiet",
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env=thread_env(1), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {
        "val_bpb": m["val_bpb"],
        "steps": m["steps"],
        "tokens": m["tokens_trained"],
        "train_s": m["train_s"],
        "wall_s": round(wall, 1),
        "stopped_by": m["stopped_by"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tokens", default="120ktok", help="the token budget (the wall-clock one is its idle training time)"
    )
    ap.add_argument("--eval-bytes", type=int, default=65_536)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="budget-spread-") as tmp_name:
        tmp = Path(tmp_name)
        seconds: str | None = None
        for kind in ("tokens", "wall clock"):
            for run, load in enumerate(("idle", "loaded", "loaded"), start=1):
                budget = args.tokens if kind == "tokens" else seconds
                assert budget is not None
                with (
                    training_load(tmp / f"load-{kind}-{run}", "30m", ("--seed", "1"))
                    if load == "loaded"
                    else contextlib.nullcontext()
                ):
                    r = train(tmp / f"{kind.replace(' ', '-')}-{run}", budget, args)
                rows.append(
                    {
                        "budget": f"{kind} ({budget})",
                        "run": run,
                        "load": load,
                        **r,
                        "loadavg_1m": round(os.getloadavg()[0], 2),
                    }
                )  # the machine is shared: its own load too
                print(rows[-1], flush=True)
                if kind == "tokens" and run == 1:
                    seconds = f"{r['train_s']:.1f}s"
    spread = {}
    for kind in ("tokens", "wall clock"):
        bpbs = [r["val_bpb"] for r in rows if r["budget"].startswith(kind)]
        steps = [r["steps"] for r in rows if r["budget"].startswith(kind)]
        spread[kind] = {
            "val_bpb_range": max(bpbs) - min(bpbs),
            "val_bpb_std": statistics.pstdev(bpbs),
            "steps_min": min(steps),
            "steps_max": max(steps),
        }
    report(
        "budget_spread",
        "the same config and seed: token vs wall-clock budget, idle and loaded",
        rows,
        {
            "spread": spread,
            "tokens": args.tokens,
            "eval_bytes": args.eval_bytes,
            "measured_threads": 1,
            "load_threads": os.cpu_count(),
        },
    )
    for kind, s in spread.items():
        print(
            f"{kind:>10}: val_bpb range {s['val_bpb_range']:.4f} (std {s['val_bpb_std']:.4f}),"
            f" steps {s['steps_min']}-{s['steps_max']}"
        )


if __name__ == "__main__":
    main()
