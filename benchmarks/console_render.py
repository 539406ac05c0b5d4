"""Console time to first render of a run page with 200 experiments, against ``autonas status`` (the peer a person
would use instead to see the same run from a terminal).

A synthetic run folder of 200 experiments is made the agent's way (a git workspace with kept commits and discarded
refs, results.tsv, journal.md, per-experiment metrics.json, llm_calls.jsonl). Each round starts a fresh
``autonas serve`` process, waits until it listens, and times the first GET of the run page (the first render: the
folder read cold by that process, the template compiled, the plots drawn), then ``--requests`` more GETs (warm;
the median is reported); the same round times a fresh ``autonas status`` process end to end. The two sides
alternate which goes first each round; every side runs pinned to one CPU and to two (``taskset``), and with torch
and BLAS limited to that many threads, because this shared machine's load swings. Median and spread (min-max) over
the rounds; the process start-up of the server (importing the model API's torch) is reported apart, as it happens
once per server and not per page.

    python benchmarks/console_render.py [--rounds 5] [--requests 5] [--experiments 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _pin(threads: int) -> list[str]:
    return ["taskset", "-c", ",".join(str(i) for i in range(threads))] if shutil.which("taskset") else []


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as reply:
        body = reply.read()
    dt = time.perf_counter() - t0
    assert reply.status == 200 and body.count(b'<tr id="row-e') > 0, "the run page did not render its rows"
    return dt


def console_round(runs: Path, threads: int, requests: int) -> dict[str, float]:
    """A fresh server: seconds to listen, the first render, and the median of ``requests`` more renders."""
    port = _free_port()
    cmd = [*_pin(threads), sys.executable, "-m", "agent.cli", "serve", "--runs-dir", str(runs), "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("autonas serve exited before it listened") from None
                time.sleep(0.05)
        started = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/console/runs/{RUN_ID}"
        first = _get(url)
        warm = statistics.median(_get(url) for _ in range(requests))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"start_s": started, "first_render_s": first, "warm_render_s": warm}


def status_round(runs: Path, threads: int) -> float:
    """A fresh ``autonas status`` process, start to exit."""
    cmd = [*_pin(threads), sys.executable, "-m", "agent.cli", "status", RUN_ID, "--runs-dir", str(runs)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert done.returncode == 0 and "experiments recorded" in done.stdout, done.stderr[-500:]
    return dt


def _spread(values: list[float]) -> str:
    return f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=200)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks._common import report
    from tests.console_fixtures import make_run

    rows = []
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        runs = Path(tmp)
        t0 = time.perf_counter()
        make_run(runs, RUN_ID, args.experiments)
        print(f"made a run folder of {args.experiments} experiments in {time.perf_counter() - t0:.1f}s")
        for threads in (1, 2):
            console: list[dict[str, float]] = []
            status: list[float] = []
            load_before = os.getloadavg()[0]  # this machine is shared: say how busy it was
            for r in range(args.rounds):
                sides = ["console", "status"] if r % 2 == 0 else ["status", "console"]
                for side in sides:
                    if side == "console":
                        console.append(console_round(runs, threads, args.requests))
                    else:
                        status.append(status_round(runs, threads))
            first = [c["first_render_s"] for c in console]
            warm = [c["warm_render_s"] for c in console]
            start = [c["start_s"] for c in console]
            rows.append(
                {
                    "threads": threads,
                    "console first render ms (median)": statistics.median(first) * 1000,
                    "first render spread ms": _spread(first),
                    "console warm render ms (median)": statistics.median(warm) * 1000,
                    "server start s (median)": statistics.median(start),
                    "autonas status ms (median)": statistics.median(status) * 1000,
                    "status spread ms": _spread(status),
                    "rounds": args.rounds,
                    "load 1-min (start-end)": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}",
                }
            )
    report(
        "console_render",
        f"console: run page with {args.experiments} experiments (fresh server per round) vs autonas status",
        rows,
        {"experiments": args.experiments, "requests_per_round": args.requests},
    )


if __name__ == "__main__":
    main()
