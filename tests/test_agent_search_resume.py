"""A kill of the agent during its architecture search, then ``autonas resume``: the search continues its study (the
trials finished before the kill count and are not run again) and the experiment finishes. The agent runs with
secrets of unknown names in its environment, and none reaches any worker it starts (train, search, search workers)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.canaries import CANARIES, environ_of, leaks

REPO = Path(__file__).resolve().parents[1]
TRIALS = 3


def _workers_seen(root: Path, seen: dict[int, tuple[str, str]]) -> None:
    """Record the command line and environment of every live process working under ``root`` (the agent's workers run
    in its workspace; the agent itself does not)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in seen:
            continue
        try:
            if not os.readlink(entry / "cwd").startswith(str(root)):
                continue
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        env = environ_of(int(entry.name))
        if env:  # empty for a moment right after exec: read again on the next pass
            seen[int(entry.name)] = (cmdline, env)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path), delimiter="\t")) if path.is_file() else []


@pytest.mark.slow
def test_a_search_killed_with_the_agent_resumes_with_its_finished_trials(
    tmp_path: Path, small_corpus_dir: Path
) -> None:
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "agent.cli",
        "run",
        "find the best Python code model under 1 MB",
        "--run-id",
        "k1",
        "--runs-dir",
        str(runs),
        "--budget",
        "30m",
        "--experiment-budget",
        "1ktok",
        "--max-experiments",
        "3",
        "--search-trials",
        str(TRIALS),
        "--planner",
        "offline",
        "--corpus",
        str(small_corpus_dir),
        "--eval-bytes",
        "2000",
    ]
    env = {**os.environ, **CANARIES}
    workspace = runs / "k1" / "workspace"
    search = workspace / "runs" / "e003"  # the offline planner: baseline, its repeat, then the search
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    seen: dict[int, tuple[str, str]] = {}
    finished: dict[Path, int] = {}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        _workers_seen(workspace, seen)
        done = [r for r in _rows(search / "results.tsv") if r["stage"] == "1" and r["status"] == "ok"]
        if done:
            finished = {p: p.stat().st_mtime_ns for p in (search / "trials").glob("s1-*/metrics.json")}
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before its search could be killed"
    assert 1 <= len(finished) < TRIALS
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.time() + 30  # the workers die with the agent (parent-death signal)
    while time.time() < end and any(environ_of(pid) is not None for pid in seen):
        time.sleep(0.1)

    resumed = subprocess.run(
        [sys.executable, "-m", "agent.cli", "resume", "k1", "--runs-dir", str(runs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    experiments = {r["experiment"]: r for r in _rows(workspace / "results.tsv")}
    assert experiments["e003"]["kind"] == "nas_search" and experiments["e003"]["decision"] == "keep", experiments[
        "e003"
    ]["reason"]
    assert "already exists" not in (search / "worker.log").read_text()
    ok = [r for r in _rows(search / "results.tsv") if r["stage"] == "1" and r["status"] == "ok"]
    assert len(ok) == TRIALS and len({r["arch_hash"] for r in ok}) == TRIALS
    for path, mtime in finished.items():  # the trials finished before the kill count and were not run again
        assert path.stat().st_mtime_ns == mtime
        assert int(path.parent.name.split("-")[1]) in {int(r["trial"]) for r in ok}
    assert json.loads((search / "metrics.json").read_text())["trials_stage1_ok"] == TRIALS

    kinds = {
        k for cmdline, _ in seen.values() for k in ("nas train", "nas nas search", "nas.worker") if f"-m {k}" in cmdline
    }
    assert kinds == {"nas train", "nas nas search", "nas.worker"}, [c for c, _ in seen.values()]
    for cmdline, environ in seen.values():
        if " -m nas" in cmdline:  # the Python workers (git, run by the workspace's library, is not checked here)
            assert leaks(environ) == [], (cmdline, leaks(environ))


def test_only_the_same_plans_study_is_continued(tmp_path: Path) -> None:
    import optuna

    from agent.plans import parse_plan
    from agent.search_resume import PLAN_STAMP, search_continuation
    from nas.storage import open_storage

    plan = parse_plan(
        {"kind": "nas_search", "config": {"trials": 3, "seed": 0}, "rationale": "why", "code_change": None}
    )
    out = tmp_path / "e003"
    out.mkdir()
    assert search_continuation(out, plan) == [] and (out / PLAN_STAMP).is_file()  # a first start stamps its folder
    optuna.create_study(storage=open_storage(None, out), study_name="search")
    # same experiment
    assert search_continuation(out, plan.model_copy(update={"rationale": "said otherwise"})) == ["--resume"]
    other = plan.with_seed(1, "why")
    assert search_continuation(out, other) == []  # another plan's study is never continued: kept aside, started afresh
    assert (tmp_path / "e003.stale-1" / "study.journal").is_file() and not (out / "study.journal").exists()
    (out / "study.journal").write_text("")  # a journal without the study (killed while it was being created)
    assert search_continuation(out, other) == [] and (tmp_path / "e003.stale-2").is_dir()
