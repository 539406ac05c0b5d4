"""The offline research agent against plain random search, same wall clock, same goal.

Both get ``--minutes`` of wall clock on this machine, the goal's size limit, the same corpus, tokenizer,
evaluation bytes and per-model training budget (``--experiment-budget`` for each agent experiment, the
same as ``--stage1`` for each random trial, one worker) and the same torch threads (``--threads``, 1 by
default). Reported: experiments done and kept, the best validation bpb each found, the agent's first
experiment's bpb, and the agent's own overhead (time in its nodes outside the worker subprocesses) per
iteration.

Both sides' best models are scored again on the locked held-out split by the same command (``nas eval --split
heldout``, the same bytes), so the held-out bpb compares like with like. ``--runs N`` repeats the pair N times,
run ``r`` with seed ``--seed + r`` on both sides (the agent's ``--seed``, the search's ``--seed``), so the runs are
N different samples, not one sample N times; a summary row per side gives the mean and the best over the runs.

``--pairing concurrent`` (the default) runs a pair's two sides at the same time, each on ``--threads`` threads, so
both see the same machine load minute by minute (on a shared machine the load can change several-fold within a
run, and one side in turn after the other sees a different machine); ``--pairing alternate`` runs them one after
the other, the order swapped every run, and takes half the wall clock per side. The agent's experiments (kind,
decision, val bpb) and its rung searches (trials per rung) are recorded, so a row shows whether it used its
rungs; ``--keep DIR`` keeps both sides' run folders there.

    python benchmarks/agent_vs_random.py [--minutes 10] [--experiment-budget 60s] [--goal "..."] [--runs 3]
        [--pairing concurrent|alternate] [--threads 1] [--keep DIR]
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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from _common import report, thread_env

from agent.goal import parse_goal
from harness.run_files import EVAL_BYTES


def side_env(args: argparse.Namespace) -> dict[str, str]:
    """One side's environment: torch, OpenMP and MKL in it and in every worker it starts on ``--threads`` threads."""
    return {**thread_env(args.threads), "AUTONAS_WORKER_THREADS": str(args.threads)}


def heldout(model_dir: Path | None, args: argparse.Namespace, out: Path) -> float | None:
    """Held-out bpb of a trained model folder, by the harness (the same command for both sides)."""
    if model_dir is None or not (model_dir / "model.safetensors").is_file():
        return None
    cmd = [sys.executable, "-m", "agent.cli", "evaluate", "--model", str(model_dir), "--split", "heldout"]
    cmd += ["--eval-bytes", str(args.eval_bytes), "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=side_env(args))
    return float(json.loads(out.read_text())["heldout_bpb"])


def agent_experiments(workspace: Path) -> str:
    """The agent's experiments in order, as its workspace's results.tsv lists them: ``e1 train keep 2.3101; ...``."""
    path = workspace / "results.tsv"
    if not path.is_file():
        return ""
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    parts = []
    for r in rows:
        bpb = f" {float(r['val_bpb']):.4f}" if r.get("val_bpb") not in (None, "") else ""
        parts.append(f"{r['experiment']} {r['kind']} {r['decision']}{bpb}")
    return "; ".join(parts)


def rung_trials(search_dir: Path) -> str:
    """Trials a rung search trained per rung, from its results.tsv: ``rung1:8 rung2:3 rung3:1``."""
    path = search_dir / "results.tsv"
    if not path.is_file():
        return ""
    with open(path) as fh:
        stages = Counter(r["stage"] for r in csv.DictReader(fh, delimiter="\t") if r.get("status") == "ok")
    return " ".join(f"rung{k}:{stages[k]}" for k in sorted(stages, key=int))


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
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    with open(tmp / "agent.log", "w") as log:  # its progress lines (two sides at once would interleave them)
        subprocess.run(cmd, check=True, env=side_env(args), stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    s = json.loads((tmp / "agent" / "summary.json").read_text())
    workspace = tmp / "agent" / "workspace"
    searches = sorted(p.parent for p in (workspace / "runs").glob("e*/rungs.json"))
    return {
        "method": "agent (offline planner)",
        "seed": seed,
        "wall_s": wall,
        "loadavg_1m_start": load0,
        "rung_searches": len(searches),
        "rung_trials": "; ".join(f"{p.name}: {rung_trials(p)}" for p in searches),
        "agent_experiments": agent_experiments(workspace),
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
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=side_env(args))
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
        "loadavg_1m_start": load0,
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


def run_side(
    side: Callable[[Path, argparse.Namespace, int], dict], tmp: Path, args: argparse.Namespace, seed: int
) -> dict:
    """One side's row; a side whose command failed gives a row that says so, and the other runs still count."""
    try:
        return side(tmp, args, seed)
    except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as e:
        method = "agent (offline planner)" if side is run_agent else "random search"
        return {"method": method, "seed": seed, "error": f"{type(e).__name__}: {e}", "heldout_bpb_same_eval": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--experiment-budget", default="60s")
    ap.add_argument("--goal", default="find the best Python code model under 2 MB")
    ap.add_argument("--eval-bytes", type=int, default=EVAL_BYTES)
    ap.add_argument("--runs", type=int, default=1, help="pairs of runs; run r uses seed --seed + r on both sides")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first run")
    ap.add_argument("--name", default="agent_vs_random", help="results/<name>.json")
    ap.add_argument(
        "--pairing",
        choices=("concurrent", "alternate"),
        default="concurrent",
        help="a pair's sides at the same time (the same load on both) or one after the other, order swapped per run",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side and of its workers")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders under DIR/run<r>/<side>")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    rows = []
    for r in range(args.runs):
        seed = args.seed + r
        sides = (run_agent, run_random) if r % 2 == 0 else (run_random, run_agent)
        with ExitStack() as stack:

            def folder(side: object, r: int = r) -> Path:
                if args.keep is None:
                    return Path(stack.enter_context(tempfile.TemporaryDirectory()))
                path = args.keep / f"run{r + 1}" / ("agent" if side is run_agent else "random")
                path.mkdir(parents=True, exist_ok=False)
                return path

            dirs = [folder(side) for side in sides]
            if args.pairing == "concurrent":  # both at once: every change of the machine's load falls on both
                with ThreadPoolExecutor(max_workers=2) as pool:
                    futures = [pool.submit(run_side, side, d, args, seed) for side, d in zip(sides, dirs, strict=True)]
                    done = [f.result() for f in futures]
            else:  # one after the other, the order swapped each run
                done = [run_side(side, d, args, seed) for side, d in zip(sides, dirs, strict=True)]
            rows += [{"run": r + 1, **row, "loadavg_1m_end": os.getloadavg()[0]} for row in done]
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
            "pairing": args.pairing,
            "threads_per_side": args.threads,
        },
    )


if __name__ == "__main__":
    main()
