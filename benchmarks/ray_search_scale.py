"""A 1000-trial search on a real two-node Ray cluster on this machine, by the command a user types.

It starts ``ray start --head`` and a second node (``ray start --address``), each ``--block`` in a session of its own,
one CPU each, on the loopback address, and runs::

    python -m nas nas search --executor ray --ray-address 127.0.0.1:PORT --space tiny --strategy random \\
        --trials 1000 --stage1 256tok --stage2 512tok --stage2-max 3 --batch-size 1 --eval-bytes 512 --quiet

on a ~300 KB corpus of 25 standard-library files: each trial's work is tiny, so the figures are what the search and
the executor do with 1000 trials (screening, sampling, Ray round trips, bookkeeping), the same sizes as the local
1000-trial test (tests/test_search_scale.py). Both nodes are ended by their process groups afterwards, never by
``ray stop`` (that ends every Ray process on the machine, other users' clusters included), and the benchmark checks
that none of their processes is left.

Reported: wall time of the search command, trials trained at stage 1 (and their statuses), stage-2 promotions, the
load average around the run, and Ray processes left after the nodes were ended (the run fails if any is).

Measured (results/ray_search_scale_1000.json): 1000 trained, all ok, 3 promoted, 374 s (160 trained a minute) at
load 3.7-4.0 on the 2-core machine, with another session's test suite beside it; no Ray process left.

    python benchmarks/ray_search_scale.py [--trials 1000] [--name ray_search_scale]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _common import REPO, report

from harness.data import stdlib_dir

CORPUS_FILES = [
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py",
    "textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "heapq.py", "bisect.py",
    "colorsys.py", "keyword.py", "numbers.py", "queue.py", "sched.py", "stat.py", "this.py", "token.py",
    "csv.py", "difflib.py", "getopt.py", "gettext.py", "graphlib.py",
]  # fmt: skip

# A cluster of our own: no token shared through the home folder, no usage reports, torch on one thread per task.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "AUTONAS_WORKER_THREADS": "1",
}
READY = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@contextmanager
def ray_node(args: list[str], log: Path, leftovers: list[int], timeout_s: float = 120) -> Iterator[int]:
    """``ray start --block ARGS`` in a session of its own, waited for until it says it started; on the way out its
    process group is killed and any of its processes that left the group are ended by their ids. Processes still
    alive 10 s later are appended to ``leftovers``."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args],
            env={**os.environ, **RAY_ENV},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        end = time.monotonic() + timeout_s
        while READY not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > end:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                sys.exit(f"ray start {' '.join(args[:2])} did not start: {' | '.join(tail)}")
            time.sleep(0.5)
        yield proc.pid
    finally:
        found = descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        for pid in found:  # a process that left the group: ended by its id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 10
        while any(alive(p) for p in found) and time.monotonic() < end:
            time.sleep(0.2)
        leftovers += [p for p in found if alive(p)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="ray_search_scale", help="results/<name>.json")
    args = ap.parse_args()
    if args.trials < 1:
        ap.error("--trials must be at least 1")
    leftovers: list[int] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
        stack.callback(shutil.rmtree, ray_tmp, True)
        corpus = tmp / "corpus"
        for rel in CORPUS_FILES:
            (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(stdlib_dir() / rel, corpus / rel)
        port = free_port()
        node = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
        head = ["--head", "--port", str(port), *node, "--temp-dir", str(ray_tmp), "--include-dashboard", "false"]
        t_cluster = time.monotonic()
        stack.enter_context(ray_node(head, tmp / "head.log", leftovers))
        stack.enter_context(ray_node(["--address", f"127.0.0.1:{port}", *node], tmp / "node.log", leftovers))
        cluster_s = time.monotonic() - t_cluster
        out = tmp / "search"
        cmd = [sys.executable, "-m", "nas", "nas", "search", "--out", str(out), "--executor", "ray"]
        cmd += ["--ray-address", f"127.0.0.1:{port}", "--space", "tiny", "--strategy", "random"]
        cmd += ["--trials", str(args.trials), "--stage1", "256tok", "--stage2", "512tok", "--stage2-max", "3"]
        cmd += ["--batch-size", "1", "--eval-bytes", "512", "--corpus", str(corpus), "--seed", str(args.seed)]
        cmd += ["--quiet"]
        env = {**os.environ, **RAY_ENV, "AUTONAS_CACHE": str(tmp / "cache")}
        load0, t0 = os.getloadavg()[0], time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall, load1 = time.monotonic() - t0, os.getloadavg()[0]
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            sys.exit(f"the search failed (exit {done.returncode}): " + " | ".join(tail))
        with open(out / "results.tsv") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        metrics = json.loads((out / "metrics.json").read_text())
    stage1 = Counter(r["status"] for r in rows if r["stage"] == "1")
    stage2 = Counter(r["status"] for r in rows if r["stage"] == "2")
    trained = sum(n for st, n in stage1.items() if st not in ("screened", "duplicate", "rejected", "not_run"))
    row = {
        "trials asked": args.trials,
        "stage-1 trained": trained,
        "stage-1 ok": stage1.get("ok", 0),
        "stage-1 statuses": " ".join(f"{k}:{v}" for k, v in sorted(stage1.items())),
        "stage-2 statuses": " ".join(f"{k}:{v}" for k, v in sorted(stage2.items())),
        "metrics status": metrics.get("status"),
        "search wall s": round(wall, 1),
        "trained per minute": round(60 * trained / wall, 1),
        "cluster start s": round(cluster_s, 1),
        "load avg": f"{load0:.1f}-{load1:.1f}",
        "ray processes left": len(leftovers),
    }
    report(args.name, f"{args.trials}-trial tiny search on a two-node local Ray cluster (1 CPU each)", [row])
    if leftovers:
        sys.exit(f"{len(leftovers)} Ray process(es) outlived their node's group: {sorted(leftovers)}")


if __name__ == "__main__":
    main()
