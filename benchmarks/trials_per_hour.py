"""Architectures trained per CPU-hour at the search's lowest rung, measured on real searches; per GPU-hour estimated.

Each measurement is one real ``autonas nas search`` (``python -m nas nas search``) in a fresh process, on the tiny
and the default space, at the search's default lowest-rung budget (``--stage1``, 30 s) with no stage 2, screening on,
the stdlib corpus: a night's search is these trials one after the other. Two settings share the machine's cores:
one worker per core at one thread each (the default of ``nas.executors.worker_threads``), and one worker with every
core's thread. The order of spaces and settings alternates round by round; medians and spreads are reported, with the
load average around each measurement (this shared machine's speed swings several-fold with other jobs). On this
machine at load 13-15, one worker at two threads trained 490 tokens/s and its trials did not finish their evaluation
within the 210 s trial limit (3 timeouts in 11 minutes), so that setting was measured as timing out and the figures
below are at one thread per worker (``--settings 2x1``).

Figures, per measurement (the whole command: start-up, screening, trials, final front, ``best/`` export):

- trained per CPU-hour: trials trained / CPU-hours the command used (its own and its workers' user + system time,
  from ``getrusage(RUSAGE_CHILDREN)``): what a core-hour buys when the core is ours.
- per core-hour of wall time: trials trained / (wall hours x cores given to it): what a machine-hour buys per core.

Per GPU-hour (an estimate: no GPU here). A trial's time on a GPU = its tokens at this rung / a GPU trial's measured
training tokens/s + the per-trial overhead a GPU trial measured beside its training (start-up of its worker, eval,
latency, files), both from ``benchmarks/results/gpu_check_h200.json``'s ``local_executor_trial`` (one worker per GPU,
as ``LocalExecutor`` runs; the overhead is that of a fresh worker's first trial, an upper bound). Two rows: the same
tokens as a CPU trial of this rung trained here (median ``tokens_trained``), and the same 30 s budget (a time budget
takes its time on any device: only the overhead differs).

    python benchmarks/trials_per_hour.py [--rounds 2] [--trials 4] [--stage1 30s] [--spaces tiny,default]
    python benchmarks/trials_per_hour.py --one SPACE WORKERS THREADS ...   # one measurement, JSON on stdout
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_RESULTS = HERE / "results" / "gpu_check_h200.json"
TRAINED = ("ok", "diverged", "crashed", "capped")  # a trial that went to a worker and came back with a result


def measure_one(space: str, workers: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """One search in a fresh process; its wall and CPU seconds, trials trained, tokens per trial, the load."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "search"
        cmd = [sys.executable, "-m", "nas", "nas", "search", "--out", str(out), "--space", space]
        cmd += ["--trials", str(args.trials), "--stage1", args.stage1, "--stage2", "none", "--quiet"]
        cmd += ["--workers", str(workers), "--corpus", args.corpus, "--seed", str(args.seed)]
        env = {**os.environ, "AUTONAS_WORKER_THREADS": str(threads), "OMP_NUM_THREADS": "1"}  # the driver: 1 thread
        load0 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load1 = os.getloadavg()[0]
        with open(out / "results.tsv") as fh:
            rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["stage"] == "1"]
    trained = [r for r in rows if r["status"] in TRAINED]
    tokens = [float(r["tokens_trained"]) for r in trained if r.get("tokens_trained")]
    return {
        "space": space,
        "workers": workers,
        "threads": threads,
        "trained": len(trained),
        "ok": sum(1 for r in trained if r["status"] == "ok"),
        "screened_out": sum(1 for r in rows if r["status"] == "screened"),
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "tokens_per_trial": statistics.median(tokens) if tokens else None,
        "load_before": load0,
        "load_after": load1,
    }


def _fresh(space: str, workers: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", space, str(workers), str(threads), "--trials", str(args.trials)]
    cmd += ["--stage1", args.stage1, "--corpus", args.corpus, "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def gpu_estimate(tokens_per_trial: float | None, stage1: str) -> list[dict[str, Any]]:
    """Trials per GPU-hour from the H200 check's measured trial (see the module docstring); [] without that record."""
    if not GPU_RESULTS.is_file():
        return []
    record = json.loads(GPU_RESULTS.read_text())
    trial = next((c for c in record.get("checks", []) if c.get("name") == "local_executor_trial"), None)
    if not trial or trial.get("status") != "ok":
        return []
    fig = trial["figures"]
    gpu_tps, run_s = float(fig["tokens_per_s"]), float(fig["run_s"])
    trial_tokens = 200_000  # kernels/gpu_check.py's _trial_spec budget for this check
    overhead = max(run_s - trial_tokens / gpu_tps, 0.0)
    rows = []
    if tokens_per_trial:
        t = tokens_per_trial / gpu_tps + overhead
        rows.append(
            {
                "space": "estimate: H200, 1 worker",
                "setting": f"same tokens ({tokens_per_trial:,.0f}/trial)",
                "trained per GPU-hour": round(3600 / t),
                "s per trial": round(t, 2),
                "how": f"{tokens_per_trial:,.0f} tok / {gpu_tps:,.0f} tok/s + {overhead:.2f} s overhead",
            }
        )
    from harness.budget import parse_budget

    seconds = parse_budget(stage1).seconds
    if seconds is not None:
        t = seconds + overhead
        rows.append(
            {
                "space": "estimate: H200, 1 worker",
                "setting": f"same {stage1} budget",
                "trained per GPU-hour": round(3600 / t),
                "s per trial": round(t, 2),
                "how": f"{seconds:.0f} s + {overhead:.2f} s overhead",
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--trials", type=int, default=4, help="stage-1 trainings per search")
    p.add_argument("--stage1", default="30s", help="the lowest rung's budget (the search's default: 30s)")
    p.add_argument("--spaces", default="tiny,default")
    p.add_argument("--corpus", default="stdlib")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="", help="WORKERSxTHREADS,... (default: cores x 1 and 1 x cores)")
    p.add_argument("--one", nargs=3, metavar=("SPACE", "WORKERS", "THREADS"))
    args = p.parse_args()
    if args.one:
        space, workers, threads = args.one
        print(json.dumps(measure_one(space, int(workers), int(threads), args)))
        return

    sys.path.insert(0, str(HERE))
    from _common import report

    cores = os.cpu_count() or 1
    settings = [(cores, 1), (1, cores)] if cores > 1 else [(1, 1)]
    if args.settings:  # e.g. "2x1": what a loaded machine leaves time for (see the module docstring)
        settings = [(int(w), int(t)) for w, t in (x.split("x") for x in args.settings.split(","))]
    cases = [(s, w, t) for s in args.spaces.split(",") for w, t in settings]
    runs: dict[str, list[dict[str, Any]]] = {f"{s} {w}x{t}": [] for s, w, t in cases}
    for r in range(args.rounds):
        for space, workers, threads in cases if r % 2 == 0 else cases[::-1]:
            m = _fresh(space, workers, threads, args)
            runs[f"{space} {workers}x{threads}"].append(m)
            print(f"round {r + 1}/{args.rounds} {space} {workers}x{threads}: {m}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for ms in runs.values():
        per_cpu_h = [3600 * m["trained"] / m["cpu_s"] for m in ms]
        per_core_h = [3600 * m["trained"] / (m["wall_s"] * cores) for m in ms]
        rows.append(
            {
                "space": ms[0]["space"],
                "setting": f"{ms[0]['workers']} worker(s) x {ms[0]['threads']} thread(s)",
                "trained per CPU-hour (median)": round(statistics.median(per_cpu_h)),
                "min-max": f"{min(per_cpu_h):,.0f}-{max(per_cpu_h):,.0f}",
                "per core-hour of wall": f"{statistics.median(per_core_h):,.0f} ({min(per_core_h):,.0f}-"
                f"{max(per_core_h):,.0f})",
                "tokens per trial": round(statistics.median(m["tokens_per_trial"] or 0 for m in ms)),
                "load avg": f"{min(m['load_before'] for m in ms):.1f}-{max(m['load_after'] for m in ms):.1f}",
            }
        )
    tokens = [m["tokens_per_trial"] for ms in runs.values() for m in ms if m["tokens_per_trial"]]
    tiny_tokens = [m["tokens_per_trial"] for k, ms in runs.items() if k.startswith("tiny") for m in ms]
    estimate = gpu_estimate(statistics.median(tiny_tokens or tokens) if tokens else None, args.stage1)
    report(
        "trials_per_hour",
        f"Architectures trained per CPU-hour at the lowest rung ({args.stage1}, screening on, no stage 2), "
        f"{args.rounds} rounds x {args.trials} trials per search, {cores} cores",
        rows,
        {"runs": runs, "args": vars(args), "gpu_estimate": estimate},
    )
    if estimate:
        report("trials_per_hour_gpu_estimate", "Trained per GPU-hour, estimated (see the docstring)", estimate)


if __name__ == "__main__":
    main()
