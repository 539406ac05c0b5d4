"""Per-trial overhead of the local and Ray executors, and trials per hour at the stage-1 fidelity.

Overhead = time from submit to result seen by the driver, minus the trial's own ``wall_s`` (training and
evaluation as the trainer timed them). The first trial on each worker also pays for starting Python and
torch; the figure reported is the steady state (later trials), with the first shown apart.

    python benchmarks/executor_overhead.py [--trials 6] [--stage1 30s --search-trials 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _common import report

from nas.executors import LocalExecutor, RayExecutor
from nas.search import Search, SearchConfig
from nas.space import ArchConfig
from nas.trial import TrialSpec

ARCH = ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, context_length=64)


def overheads(executor, tmp: str, n: int) -> list[float]:
    out = []
    for i in range(n):  # one at a time, so the driver-side time is the trial's alone
        spec = TrialSpec(
            number=i,
            arch=ARCH,
            budget="8ktok",
            out_dir=f"{tmp}/t{i}",
            eval_bytes=4096,
            batch_size=8,
            measure_latency=False,
        )
        t0 = time.perf_counter()
        executor.submit(spec)
        results = []
        while not results:
            results = executor.wait(timeout=10)
        seen = time.perf_counter() - t0
        out.append(seen - float(results[0].metrics["wall_s"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--stage1", default="30s")
    ap.add_argument("--search-trials", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for name in ("local", "ray"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ex = LocalExecutor(workers=1) if name == "local" else RayExecutor("local")
            start_s = time.perf_counter() - t0
            try:
                ov = overheads(ex, tmp, args.trials)
            finally:
                ex.shutdown()
        rows.append(
            {
                "what": f"{name} executor",
                "startup_s": start_s,
                "first_trial_overhead_s": ov[0],
                "overhead_s_mean": statistics.fmean(ov[1:]),
                "overhead_s_max": max(ov[1:]),
                "trials": len(ov),
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(
            out=tmp,
            space="default",
            trials=args.search_trials,
            stage1_budget=args.stage1,
            stage2_budget="none",
            workers=args.workers,
            export_hf=False,
        )
        t0 = time.perf_counter()
        summary = Search(cfg, live=False).run()
        elapsed = time.perf_counter() - t0
        trained = sum(
            v
            for k, v in summary["counts"].items()
            if k.startswith("stage1_") and k.split("_", 1)[1] in ("ok", "diverged", "crashed")
        )
    rows.append(
        {
            "what": f"search, stage 1 = {args.stage1}, {args.workers} workers",
            "trials": trained,
            "elapsed_s": elapsed,
            "trials_per_hour": trained / elapsed * 3600,
        }
    )
    report("executor_overhead", "per-trial executor overhead and stage-1 trials per hour (this CPU)", rows)


if __name__ == "__main__":
    main()
