"""Budgets: a token budget trains exactly its tokens (so a number does not depend on the machine's load), a
wall-clock cap ends a run early and says so, the agent's experiments never outlive the run's budget by more than
one grace period, and a bad budget is one line."""

import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.plans import PlanContext, PlanError, check_plan, parse_plan
from harness.data import CorpusSpec, prepare_corpus
from nas.space import ArchConfig
from nas.train import Trainer, TrainConfig, prepare_run_dir

TINY = ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=64)
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(small_corpus_dir):
    return prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")


def _train(out: Path, corpus, **kw) -> dict:
    cfg = TrainConfig(**{"batch_size": 4, "eval_bytes": 4000, "measure_latency": False, "device": "cpu", "log_every": 5, **kw})
    prepare_run_dir(out)
    Trainer(TINY, corpus, cfg, out, log_to_console=False).run()
    return json.loads((out / "metrics.json").read_text())


def test_token_budget_trains_exactly_its_tokens_and_repeats_exactly(tmp_path, corpus):
    budget = 30 * 4 * 64  # 30 steps of 4 windows of 64 tokens
    a = _train(tmp_path / "a", corpus, budget_tokens=budget, seed=3)
    b = _train(tmp_path / "b", corpus, budget_tokens=budget, seed=3)
    for m in (a, b):
        assert m["status"] == "ok" and m["stopped_by"] == "tokens"
        assert m["tokens_trained"] == budget == m["budget_tokens"] and m["steps"] == 30
        assert "budget_s" not in m and "max_seconds" not in m
    assert a["val_bpb"] == b["val_bpb"]  # same config and seed: the same number, whatever the load
    assert a["train_loss_last"] == b["train_loss_last"]
    other_seed = _train(tmp_path / "c", corpus, budget_tokens=budget, seed=4)
    assert other_seed["val_bpb"] != a["val_bpb"]  # the comparison above can fail


def test_wall_cap_ends_a_long_token_budget_and_is_recorded(tmp_path, corpus):
    budget = 10**9
    m = _train(tmp_path / "capped", corpus, budget_tokens=budget, max_seconds=1.5)
    assert m["status"] == "capped" and m["stopped_by"] == "wall_cap"
    assert 0 < m["tokens_trained"] < budget and m["budget_tokens"] == budget and m["max_seconds"] == 1.5
    assert "wall-clock cap of 1.5s" in m["fail_reason"] and f"of {budget:,} tokens" in m["fail_reason"]
    assert "val_bpb" not in m and not (tmp_path / "capped" / "model.safetensors").exists()  # partial: never scored
    timed = _train(tmp_path / "timed", corpus, budget_s=0.5, max_seconds=600)
    assert timed["status"] == "ok" and timed["stopped_by"] == "time" and timed["budget_s"] == 0.5


def test_the_metric_judge_treats_a_capped_run_as_a_crash_with_its_reason():
    from agent.goal import parse_goal
    from agent.judge import judge

    capped = {"status": "capped", "fail_reason": "wall-clock cap of 10s reached after 5 of 9 tokens", "stopped_by": "wall_cap"}
    v = judge(parse_goal("best code model under 2 MB"), capped, 3.0, 0.01)
    assert v.decision == "crash" and "wall-clock cap" in v.reason


def test_train_cli_records_the_cap_and_exits_1(tmp_path, small_corpus_dir):
    arch = tmp_path / "arch.json"
    arch.write_text(TINY.to_json())
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--arch", str(arch), "--corpus", str(small_corpus_dir), "--budget", "50Mtok",
                                 "--max-seconds", "3", "--out", str(out), "--quiet", "--batch-size", "4", "--eval-bytes", "2000"])
    assert result.exit_code == 1, result.output
    assert "stopped early" in result.output and "wall-clock cap of 3s" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_by"] == "wall_cap" and m["budget_tokens"] == 50_000_000 and m["tokens_trained"] < 50_000_000


@pytest.mark.parametrize("args, message", [
    (["train", "--budget", "2s", "--max-seconds", "0"], "--max-seconds"),
    (["train", "--budget", "2s", "--max-seconds", "nan"], "--max-seconds"),
    (["train", "--budget", "5 parsecs"], "unknown budget unit"),
    (["run", "find the best Python code model under 1 MB", "--experiment-budget", "lots"], "cannot read budget"),
    (["run", "find the best Python code model under 1 MB", "--experiment-budget", "0tok"], "budget must be positive"),
    (["run", "find the best Python code model under 1 MB", "--budget", "2Mtok"], "wall-clock time"),
    (["run", "find the best Python code model under 1 MB", "--grace", "-5s"], "--grace"),
])
def test_bad_budgets_are_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else ["--runs-dir", str(tmp_path)])])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not any(tmp_path.iterdir())
