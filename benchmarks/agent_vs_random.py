"""The offline research agent against plain random search, same wall clock, same goal.

Both get ``--minutes`` of wall clock on this machine, the goal's size limit, the same corpus, tokenizer,
evaluation bytes and per-model training budget (``--experiment-budget`` for each agent experiment, the
same as ``--stage1`` for each random trial, one worker). Reported: experiments done and kept, the best
validation bpb each found, the agent's first experiment's bpb, and the agent's own overhead (time in its
nodes outside the worker subprocesses) per iteration.

    python benchmarks/agent_vs_random.py [--minutes 10] [--experiment-budget 60s] [--goal "..."]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

from agent.goal import parse_goal
from harness.run_files import EVAL_BYTES


def run_agent(tmp: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "agent.cli",
        "run",
        args.goal,
        "--budget",
        f"{args.minutes}m",
        "--experiment-budget",
        args.experiment_budget,
        "--runs-dir",
        str(tmp),
        "--run-id",
        "agent",
        "--eval-bytes",
        str(args.eval_bytes),
        "--planner",
        "offline",
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - t0
    s = json.loads((tmp / "agent" / "summary.json").read_text())
    return {
        "method": "agent (offline planner)",
        "wall_s": wall,
        "experiments": s["experiments"],
        "kept": s["kept"],
        "first_val_bpb": s["first_val_bpb"],
        "best_val_bpb": s["best_val_bpb"],
        "heldout_bpb": s["heldout_bpb"],
        "agent_overhead_s_per_iter": s["agent_s"] / max(s["experiments"], 1),
    }


def run_random(tmp: Path, args: argparse.Namespace) -> dict:
    goal = parse_goal(args.goal)
    out = tmp / "random"
    cmd = [
        sys.executable,
        "-m",
        "agent.cli",
        "nas",
        "search",
        "--out",
        str(out),
        "--strategy",
        "random",
        "--budget",
        f"{args.minutes}m",
        "--stage1",
        args.experiment_budget,
        "--stage2",
        "none",
        "--workers",
        "1",
        "--no-screen",
        "--trials",
        "1000",
        "--eval-bytes",
        str(args.eval_bytes),
        "--quiet",
    ]
    if goal.max_mb:
        cmd += ["--max-mb", str(goal.max_mb)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    with open(out / "results.tsv") as fh:
        rows = sorted(
            (r for r in csv.DictReader(fh, delimiter="\t") if r["stage"] == "1"), key=lambda r: int(r["trial"])
        )
    trained = [r for r in rows if r["status"] != "rejected"]  # rejected: broke the size limit, never trained
    bpbs = [float(r["val_bpb"]) for r in trained if r.get("val_bpb") not in (None, "", "nan")]
    statuses = {st: sum(r["status"] == st for r in trained) for st in sorted({r["status"] for r in trained})}
    return {
        "method": "random search",
        "wall_s": wall,
        "experiments": len(trained),
        "rejected_untrained": len(rows) - len(trained),
        "trial_statuses": " ".join(f"{k}:{v}" for k, v in statuses.items()),
        "mean_trial_wall_s": sum(float(r["wall_s"]) for r in trained if r.get("wall_s"))
        / max(1, sum(bool(r.get("wall_s")) for r in trained)),
        "kept": None,
        "first_val_bpb": bpbs[0] if bpbs else None,
        "best_val_bpb": min(bpbs) if bpbs else None,
        "heldout_bpb": None,
        "agent_overhead_s_per_iter": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--experiment-budget", default="60s")
    ap.add_argument("--goal", default="find the best Python code model under 2 MB")
    ap.add_argument("--eval-bytes", type=int, default=EVAL_BYTES)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [run_agent(tmp, args), run_random(tmp, args)]
    report(
        "agent_vs_random",
        f"{args.minutes:g} minutes each: offline agent vs random search ({args.goal!r})",
        rows,
        {
            "minutes": args.minutes,
            "experiment_budget": args.experiment_budget,
            "goal": args.goal,
            "eval_bytes": args.eval_bytes,
        },
    )


if __name__ == "__main__":
    main()
