"""The research agent: plans, judge, and offline runs end to end (git history, resume after SIGKILL, bad input)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.goal import parse_goal
from agent.judge import judge, noise_estimate
from agent.plans import PlanError, parse_plan
from harness.errors import UserError
from nas.space import ArchConfig

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_goal_parsing():
    g = parse_goal("find the best Python code model under 8 MB that runs under 10 ms per token")
    assert g.max_mb == 8 and g.max_latency_ms == 10
    assert parse_goal("smallest code LM below 500 kB").max_mb == 0.5
    for bad in ("", "   ", "hello", "purple monkey dishwasher banana"):
        with pytest.raises(UserError):
            parse_goal(bad)


def test_plan_validation_errors_are_messages_not_crashes():
    good = {"kind": "train", "config": {"arch": ArchConfig().model_dump(), "budget": "30s"}, "rationale": "baseline"}
    assert parse_plan(json.dumps(good)).config.arch == ArchConfig()
    cases = [
        ("{not json", "not valid JSON"),
        ('["a list"]', "JSON object"),
        (json.dumps({**good, "kind": "dance"}), "unknown plan kind 'dance'"),
        (json.dumps({**good, "config": {"arch": {"d_model": 100, "n_heads": 3}}}), "must be divisible by n_heads"),
        (json.dumps({**good, "rationale": ""}), "rationale"),
        (json.dumps({"kind": "nas_search", "config": {"trials": 0}, "rationale": "x"}), "trials"),
    ]
    for raw, msg in cases:
        with pytest.raises(PlanError, match=msg):
            parse_plan(raw)


def test_judge_keeps_only_gains_beyond_noise():
    goal = parse_goal("best code model under 2 MB")
    ok = {"status": "ok", "val_bpb": 3.00, "size_bytes_int8": 1_000_000}
    noise = noise_estimate([[3.10, 3.14], [2.0]])  # one repeated config: sigma ~ 0.028
    assert noise == pytest.approx(0.0283, abs=1e-3)
    assert judge(goal, ok, None, noise).decision == "keep"
    assert judge(goal, ok, 3.20, noise).decision == "keep"  # 0.2 better, far beyond 2 sigma
    close = judge(goal, {**ok, "val_bpb": 3.10}, 3.12, noise)  # a seed-sized gain
    assert close.decision == "close" and "re-run" in close.reason
    assert judge(goal, {**ok, "val_bpb": 3.10}, 3.12, noise, repeats=3).decision == "discard"
    assert judge(goal, {**ok, "val_bpb": 3.3}, 3.12, noise).decision == "discard"
    too_big = judge(goal, {**ok, "size_bytes_int8": 3_000_000}, 3.5, noise)
    assert too_big.decision == "discard" and "MB" in too_big.reason
    assert judge(goal, {"status": "diverged", "fail_reason": "loss became nan"}, 3.0, noise).decision == "crash"
    assert judge(goal, None, 3.0, noise).decision == "crash"


def _run_args(tmp_path, corpus_dir, run_id, extra=()):
    return [
        "run",
        "find the best Python code model under 1 MB",
        "--run-id",
        run_id,
        "--runs-dir",
        str(tmp_path),
        "--budget",
        "30m",
        "--experiment-budget",
        "16ktok",
        "--max-experiments",
        "6",
        "--search-trials",
        "2",
        "--corpus",
        str(corpus_dir),
        "--eval-bytes",
        "6000",
        *extra,
    ]


@pytest.mark.slow
def test_offline_run_end_to_end(tmp_path, small_corpus_dir):
    result = runner.invoke(app, _run_args(tmp_path, small_corpus_dir, "r1"))
    assert result.exit_code == 0, result.output
    run = tmp_path / "r1"
    rows = list(csv.DictReader(open(run / "workspace" / "results.tsv"), delimiter="\t"))
    assert [r["experiment"] for r in rows] == [f"e{i:03d}" for i in range(1, 7)]
    assert rows[0]["decision"] == "keep" and rows[1]["decision"] == "repeat"  # baseline, then its noise repeat
    assert rows[2]["kind"] == "nas_search"
    repo = git.Repo(run / "workspace")
    # minus the set-up
    commits = [c for c in repo.iter_commits("autonas/r1") if c.author.email == "agent@autonas.local"][:-1]
    kept = [r for r in rows if r["decision"] == "keep"]
    assert len(commits) == len(kept) >= 2  # one commit per kept experiment
    for c in commits:
        assert "experiment: e" in c.message and "val-bpb: " in c.message
    discarded = {r.path.rsplit("/", 1)[-1] for r in repo.refs if r.path.startswith("refs/autonas/discarded/")}
    assert discarded == {r["experiment"] for r in rows if r["decision"] != "keep"}
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["experiments"] == 6 and summary["heldout_bpb"] and summary["best_val_bpb"] <= summary["first_val_bpb"]
    )
    assert (run / "report.md").read_text().count("| e0") == 6 and (run / "report.html").is_file()
    assert (run / "best" / "model.safetensors").is_file()
    review = runner.invoke(app, ["review", "r1", "--runs-dir", str(tmp_path)])
    assert review.exit_code == 0 and kept[0]["commit"] in review.output
    status = runner.invoke(app, ["status", "r1", "--runs-dir", str(tmp_path)])
    assert status.exit_code == 0 and "finished" in status.output
    again = runner.invoke(app, ["resume", "r1", "--runs-dir", str(tmp_path)])
    assert again.exit_code == 2 and "has finished" in again.output


@pytest.mark.slow
def test_sigkill_then_resume_never_repeats_a_commit(tmp_path, small_corpus_dir):
    # four experiments (the last --max-experiments counts): killed after two, the resume runs the other two, so a
    # search and a training happen after the kill; the end-to-end test above runs all six kinds of the offline plan
    cmd = [sys.executable, "-m", "agent.cli"] + _run_args(tmp_path, small_corpus_dir, "k1", ("--max-experiments", "4"))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = tmp_path / "k1" / "workspace" / "results.tsv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 3:  # header + 2 experiments
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "resume", "k1", "--runs-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(results), delimiter="\t"))
    ids = [r["experiment"] for r in rows]
    assert ids == [f"e{i:03d}" for i in range(1, 5)]  # nothing lost, nothing recorded twice
    repo = git.Repo(tmp_path / "k1" / "workspace")
    tagged = [
        line.split(": ")[1]
        for c in repo.iter_commits("autonas/k1")
        for line in c.message.splitlines()
        if line.startswith("experiment: ")
    ]
    assert len(tagged) == len(set(tagged)) == sum(r["decision"] == "keep" for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", ""], "goal is empty"),
        (["run", "purple monkey dishwasher banana"], "cannot tell what to optimise"),
        (["run", "best code model under 1 MB", "--budget", "100ktok"], "wall-clock"),
        (["resume", "nope"], "no run 'nope'"),
        (["status", "nope"], "no run 'nope'"),
        (["review", "nope"], "no run 'nope'"),
        (["run", "best code model under 1 MB", "--run-id", "bad/id"], "run id"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = runner.invoke(app, args + ["--runs-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_existing_run_and_foreign_changes_are_refused(tmp_path, small_corpus_dir):
    from agent.settings import RunSettings
    from sandbox.workspace import Workspace

    settings = RunSettings(
        run_id="f1", goal="best code model under 1 MB", runs_dir=str(tmp_path), corpus=str(small_corpus_dir)
    )
    settings.run_dir.mkdir(parents=True)
    Workspace.create(settings.workspace, "f1")
    (settings.run_dir / "run.json").write_text(settings.model_dump_json())
    (settings.workspace / "someone_elses.py").write_text("x = 1\n")
    before = sorted(p.name for p in settings.run_dir.iterdir())
    result = runner.invoke(app, ["resume", "f1", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "uncommitted changes" in result.output, result.output
    assert (
        sorted(p.name for p in settings.run_dir.iterdir()) == before
        and (settings.workspace / "someone_elses.py").exists()
    )
    again = runner.invoke(app, ["run", "best code model under 1 MB", "--run-id", "f1", "--runs-dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    "change, message",
    [({"budget": "99999h"}, "maximum of 30 days"), ({"seed": 2**40}, "4294967295"), ({"budget": "1e20tok"}, "")],
)
def test_a_plans_budget_and_seed_have_the_workers_bounds(change: dict, message: str) -> None:
    """A planner's 99999h or 2^40 seed is sent back to it with the reason, not handed to a worker that refuses it."""
    from agent.plans import PlanContext, check_plan

    arch = ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128)
    plan = {
        "kind": "train",
        "config": {"arch": arch.model_dump(), "budget": "16ktok", "seed": 0, **change},
        "rationale": "x",
    }
    with pytest.raises(PlanError, match=message):
        check_plan(parse_plan(plan), PlanContext(vocab_size=256, time_left_s=10**9))
