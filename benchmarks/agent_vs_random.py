"""The offline research agent against plain random search, same wall clock, same goal.

Both get ``--minutes`` of wall clock on this machine, the goal's size limit, the same corpus, tokenizer,
evaluation bytes and per-model training budget (``--experiment-budget`` for each agent experiment, the
same as ``--stage1`` for each random trial, one worker). Reported: experiments done and kept, the best
validation bpb each found, the agent's first experiment's bpb, and the agent's own overhead (time in its
nodes outside the worker subprocesses) per iteration.

Both sides' best models are scored again on the locked held-out split by the same command (``nas eval --split
heldout``, the same bytes), so the held-out bpb compares like with like. ``--runs N`` repeats the pair N times,
run ``r`` with seed ``--seed + r`` on both sides (the agent's ``--seed``, the search's ``--seed``), so the runs are
N different samples, not one sample N times; a summary row per side gives the mean and the best over the runs.

    python benchmarks/agent_vs_random.py [--minutes 10] [--experiment-budget 60s] [--goal "..."] [--runs 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

from agent.goal import parse_goal
from harness.run_files import EVAL_BYTES


def heldout(model_dir: Path | None, args: argparse.Namespace, out: Path) -> float | None:
    """Held-out bpb of a trained model folder, by the harness (the same command for both sides)."""
    if model_dir is None or not (model_dir / "model.safetensors").is_file():
        return None
    cmd = [sys.executable, "-m", "agent.cli", "evaluate", "--model", str(model_dir), "--split", "heldout"]
    cmd += ["--eval-bytes", str(args.eval_bytes), "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return float(json.loads(out.read_text())["heldout_bpb"])


def run_agent(tmp: Path, args: argparse.Namespace, seed: int) -> dict:
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
        "--seed",
        str(seed),
    ]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - t0
    s = json.loads((tmp / "agent" / "summary.json").read_text())
    searches = [p for p in (tmp / "agent" / "workspace" / "runs").glob("e*/rungs.json")]
    return {
        "method": "agent (offline planner)",
        "seed": seed,
        "wall_s": wall,
        "rung_searches": len(searches),
        "heldout_bpb_same_eval": heldout(Path(s["best_dir"]) if s.get("best_dir") else None, args, tmp / "a.json"),
        "experiments": s["experiments"],
        "kept": s["kept"],
        "first_val_bpb": s["first_val_bpb"],
        "best_val_bpb": s["best_val_bpb"],
        "heldout_bpb": s["heldout_bpb"],
        "agent_overhead_s_per_iter": s["agent_s"] / max(s["experiments"], 1),
    }


def run_random(tmp: Path, args: argparse.Namespace, seed: int) -> dict:
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
        "--cap-trials",  # trials stop at the end of --budget, as the agent's experiments stop at its wall cap
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
        "--seed",
        str(seed),
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
    scored = [r for r in trained if r.get("val_bpb") not in (None, "", "nan")]
    best = min(scored, key=lambda r: float(r["val_bpb"])) if scored else None
    best_dir = out / "trials" / f"s1-{int(best['trial']):05d}" if best else None
    return {
        "method": "random search",
        "seed": seed,
        "wall_s": wall,
        "rung_searches": None,
        "heldout_bpb_same_eval": heldout(best_dir, args, tmp / "r.json"),
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
    ap.add_argument("--runs", type=int, default=1, help="pairs of runs; run r uses seed --seed + r on both sides")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first run")
    ap.add_argument("--name", default="agent_vs_random", help="results/<name>.json")
    args = ap.parse_args()
    rows = []
    for r in range(args.runs):  # the sides alternate, so a change of the machine's load falls on both
        seed = args.seed + r
        for side in (run_agent, run_random) if r % 2 == 0 else (run_random, run_agent):
            with tempfile.TemporaryDirectory() as d:
                rows.append({"run": r + 1, **side(Path(d), args, seed), "loadavg_1m": os.getloadavg()[0]})
    for method in dict.fromkeys(row["method"] for row in rows):
        held = [row["heldout_bpb_same_eval"] for row in rows if row["method"] == method]
        measured = [h for h in held if h is not None]
        rows.append(
            {
                "run": "all",
                "method": method,
                "heldout_bpb_same_eval_mean": statistics.fmean(measured) if measured else None,
                "heldout_bpb_same_eval_best": min(measured) if measured else None,
                "runs_without_a_model": len(held) - len(measured),
            }
        )
    report(
        args.name,
        f"{args.minutes:g} minutes each, {args.runs} run(s): offline agent vs random search ({args.goal!r})",
        rows,
        {
            "minutes": args.minutes,
            "experiment_budget": args.experiment_budget,
            "goal": args.goal,
            "eval_bytes": args.eval_bytes,
            "runs": args.runs,
            "seeds": [args.seed + r for r in range(args.runs)],
        },
    )


if __name__ == "__main__":
    main()
