"""The search at scale: a 1000-trial search accounts for every trial, and a Ray node lost mid-trial costs only a
retry of its running trial."""

from __future__ import annotations

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

from harness.data import CorpusSpec
from nas.search import Search, SearchConfig
from nas.space import ArchConfig
from nas.trial import TrialResult, TrialSpec
from sandbox.processes import signal_group
from tests.sandbox_helpers import live_descendants

TRIALS = 1000

# A test cluster of our own: no token shared through the home folder, health checks fast enough that a dead node
# is noticed in seconds rather than the default half minute.
RAY_TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


@pytest.mark.slow
def test_a_1000_trial_search_trains_every_trial_once(tmp_path, small_corpus_dir, driver_on_one_thread):
    """One search screens, trains 1000 architectures at the lowest rung and promotes the best to a second one.

    Each trial's work is made small (256 tokens of training at batch 1, 512 bytes scored) so that the test measures
    what the search itself does with 1000 trials: sampling, screening, bookkeeping and results. Random sampling: in a
    space this small NSGA-II converges and most of its later candidates are architectures already trained.

    It is one of the suite's long tests: about 62 s on the 2-core machine at load 1 (it took 5.4 min before the driver
    ran its proxies on one thread, rewrote results.tsv at most every 10 s and stopped timing each trial's latency)."""
    out = tmp_path / "s"
    cfg = SearchConfig(
        out=str(out),
        space="tiny",
        strategy="random",
        trials=TRIALS,
        stage1_budget="256tok",
        stage2_budget="512tok",
        stage2_max=3,
        batch_size=1,
        eval_bytes=512,
        workers=2,
        screen_batch=5,
        screen_keep=0.8,
        export_hf=False,
        corpus=CorpusSpec(source=str(small_corpus_dir)),
    )
    Search(cfg, live=False).run()

    with open(out / "results.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    stage1 = [r for r in rows if r["stage"] == "1"]
    trained = [r for r in stage1 if r["status"] not in ("screened", "duplicate", "rejected", "not_run", "lost")]
    assert len(trained) == TRIALS and all(r["status"] == "ok" for r in trained)
    # nothing left running or lost; a screening batch may overshoot the trial count, and its surplus is closed not_run
    assert {r["status"] for r in stage1} <= {"ok", "screened", "duplicate", "not_run"}
    assert any(r["status"] == "screened" for r in stage1)  # screening dropped candidates before training
    hashes = [r["arch_hash"] for r in trained]
    assert len(set(hashes)) == TRIALS  # no architecture trained twice

    # every trial of both studies is in results.tsv, finished, once
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    in_study = {
        (stage, t.number): t.state
        for stage, name in ((1, "search"), (2, "search.stage2"))
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    }
    assert set(in_study) == {(int(r["stage"]), int(r["trial"])) for r in rows} and len(rows) == len(in_study)
    assert optuna.trial.TrialState.RUNNING not in in_study.values()

    # no trial ran twice: one folder per trained trial, each started once
    folders = sorted((out / "trials").glob("s1-*"))
    assert [int(f.name[3:]) for f in folders] == sorted(int(r["trial"]) for r in trained)
    for f in folders:
        assert (f / "log.txt").read_text().count(" start ") == 1, f

    stage2 = [r for r in rows if r["stage"] == "2"]
    assert len(stage2) == 3 and all(r["status"] == "ok" for r in stage2)
    assert {int(r["parent"]) for r in stage2} <= {int(r["trial"]) for r in trained}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["trials_stage1_ok"] == TRIALS


@pytest.fixture
def driver_on_one_thread() -> Iterator[None]:
    """The search's own torch work (proxies on untrained models) on one thread, beside one worker per core: with two
    threads on this busy 2-core machine a candidate's proxies took 1.5-3.3 s instead of 0.08 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(what: str, check, timeout_s: float) -> None:  # noqa: ANN001 - a predicate
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def _ray_node(args: list[str], log: Path, ready: str, timeout_s: float = 90) -> Iterator[subprocess.Popen]:
    """``ray start --block ARGS`` in a session of its own (so every process it starts can be ended by its group),
    waited for until ``ready`` shows in its log; the group is killed on the way out, whatever happened."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args],
            env={**os.environ, **RAY_TEST_ENV},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(f"ray start {' '.join(args)}", lambda: ready in log.read_text(errors="replace"), timeout_s)
        yield proc
    finally:
        stragglers = live_descendants(proc.pid)
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in stragglers:  # a worker that left the group (none expected): ended by its id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _spec(i: int, out: Path, corpus_dir: Path) -> TrialSpec:
    return TrialSpec(
        number=i,
        arch=ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=64),
        budget="6s",
        out_dir=str(out / f"t{i}"),
        batch_size=4,
        eval_bytes=2000,
        seed=i,
        corpus=CorpusSpec(source=str(corpus_dir)),
        measure_latency=False,
    )


@pytest.mark.slow
def test_ray_node_lost_mid_trial_costs_only_a_retry_of_its_trial(tmp_path, small_corpus_dir, monkeypatch):
    pytest.importorskip("ray")
    for key, value in RAY_TEST_ENV.items():  # the driver speaks to the cluster on the same terms
        monkeypatch.setenv(key, value)
    port = _free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        results = _run_with_a_node_killed(port, ray_tmp, tmp_path, small_corpus_dir)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert sorted(results) == [0, 1, 2]
    assert all(r.status == "ok" for r in results.values()), {n: r.fail_reason for n, r in results.items()}
    retried = [r for r in results.values() if "executor_retries" in r.metrics]
    assert len(retried) == 1 and retried[0].metrics["executor_retries"] == 1
    reason = retried[0].metrics["executor_retry_reason"]
    assert any(name in reason for name in ("NodeDied", "WorkerCrashed", "RayletDied", "ObjectLost")), reason
    for r in results.values():  # every trial trained its budget and was scored
        assert 0 < r.metrics["val_bpb"] < 8
        assert (tmp_path / "trials" / f"t{r.number}" / "metrics.json").is_file()


def _run_with_a_node_killed(port: int, ray_tmp: Path, tmp_path: Path, corpus_dir: Path) -> dict[int, TrialResult]:
    """Three 6-second trials on a head and a second node (one CPU each); the second node's raylet is SIGKILLed while
    a trial trains there. Returns the results by trial number."""
    from nas.executors import RayExecutor

    head_args = ["--head", "--port", str(port), "--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
    head_args += ["--temp-dir", str(ray_tmp), "--include-dashboard", "false"]
    node_args = ["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
    results: dict[int, TrialResult] = {}
    with (
        _ray_node(head_args, tmp_path / "head.log", "Ray runtime started"),
        _ray_node(node_args, tmp_path / "node.log", "Ray runtime started") as node,
    ):
        ex = RayExecutor(f"127.0.0.1:{port}")
        try:
            assert ex.slots == 2  # one trial on each node
            raylet = next(p for p in live_descendants(node.pid) if "raylet/raylet" in _cmdline(p))
            todo = [_spec(i, tmp_path / "trials", corpus_dir) for i in range(3)]
            while todo and ex.free_slots() > 0:
                ex.submit(todo.pop(0))
            # a trial is training on the second node (Ray names a worker by the task it runs): kill that node
            _wait_for(
                "a trial on the second node",
                lambda: any("ray::_ray_run" in _cmdline(p) for p in live_descendants(raylet)),
                60,
            )
            time.sleep(1.5)
            os.kill(raylet, signal.SIGKILL)
            end = time.monotonic() + 180
            while len(results) < 3 and time.monotonic() < end:
                for r in ex.wait(timeout=2):
                    results[r.number] = r
                while todo and ex.free_slots() > 0:
                    ex.submit(todo.pop(0))
        finally:
            ex.shutdown()
    return results


def test_only_a_task_lost_with_its_node_or_worker_counts_as_lost():
    ray = pytest.importorskip("ray")
    from nas.executors import task_lost

    ex = ray.exceptions
    assert task_lost(ex.WorkerCrashedError(), ex)
    assert task_lost(ex.NodeDiedError("node 1 died"), ex)
    assert task_lost(ex.ObjectLostError("00ff", None, ""), ex)
    own = ex.RayTaskError("_ray_run", "Traceback ...", ValueError("the trial's own error"))
    assert not task_lost(own, ex)  # the trial's own exception
    assert not task_lost(ex.OutOfMemoryError("the trial used too much memory"), ex)
    assert not task_lost(ex.TaskCancelledError(), ex)  # its time limit
