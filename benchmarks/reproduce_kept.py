"""Can every kept result of a run be re-made? An offline ``autonas run`` with token budgets, then
``autonas reproduce`` on each kept train/distill experiment: recorded vs re-made val bpb and the run's noise margin.

Both the run and each reproduction are fresh ``autonas`` processes (the command a reviewer would type). The target is
that every re-made number lands inside the margin.

    python benchmarks/reproduce_kept.py --experiments 10 --experiment-budget 64ktok --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

AUTONAS = str(Path(sys.executable).with_name("autonas"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=10, help="experiments in the run")
    ap.add_argument("--experiment-budget", default="64ktok")
    ap.add_argument("--eval-bytes", type=int, default=65_536)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-reproduce", type=int, default=5, help="kept model experiments to re-make")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "AUTONAS_WORKER_THREADS": str(args.threads)}
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        run = subprocess.run(
            [
                AUTONAS,
                "run",
                "find the best Python code model under 1 MB",
                "--run-id",
                "rep",
                "--runs-dir",
                tmp,
                "--budget",
                "2h",
                "--experiment-budget",
                args.experiment_budget,
                "--max-experiments",
                str(args.experiments),
                "--search-trials",
                "4",
                "--eval-bytes",
                str(args.eval_bytes),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            sys.exit(f"the run failed: {run.stderr[-800:]}")
        run_s = time.monotonic() - t0
        rows_tsv = (Path(tmp) / "rep" / "workspace" / "results.tsv").read_text().splitlines()
        header = rows_tsv[0].split("\t")
        kept = [dict(zip(header, line.split("\t"), strict=False)) for line in rows_tsv[1:]]
        kept = [r for r in kept if r["decision"] == "keep" and r["kind"] in ("train", "distill")][: args.max_reproduce]
        rows = []
        for r in kept:
            t1 = time.monotonic()
            proc = subprocess.run(
                [AUTONAS, "reproduce", "rep", r["experiment"], "--runs-dir", tmp],
                env=env,
                capture_output=True,
                text=True,
            )
            record_path = Path(tmp) / "rep" / "reproduce" / f"{r['experiment']}-1" / "reproduce.json"
            rec = json.loads(record_path.read_text()) if record_path.is_file() else {}
            rows.append(
                {
                    "experiment": r["experiment"],
                    "kind": r["kind"],
                    "recorded_bpb": rec.get("recorded_bpb"),
                    "remade_bpb": rec.get("remade_bpb"),
                    "difference": rec.get("delta_bpb"),
                    "margin_bpb": rec.get("margin_bpb"),
                    "noise": "measured" if rec.get("noise_measured") else "floor",
                    "inside": rec.get("inside"),
                    "exit": proc.returncode,
                    "wall_s": round(time.monotonic() - t1, 1),
                }
            )
    inside = sum(1 for r in rows if r["inside"])
    report(
        "reproduce_kept",
        f"re-making kept results ({inside}/{len(rows)} inside the noise margin; run {run_s:.0f} s)",
        rows,
        {
            "experiment_budget": args.experiment_budget,
            "threads": args.threads,
            "inside": inside,
            "reproduced": len(rows),
        },
    )


if __name__ == "__main__":
    main()
