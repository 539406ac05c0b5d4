"""Budgets: a token budget trains exactly its tokens (so a number does not depend on the machine's load), a
wall-clock cap ends a run early and says so, the agent's experiments never outlive the run's budget by more than
one grace period, and a bad budget is one line."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import graph as agent_graph
from agent.cli import app
from agent.plans import PlanContext, PlanError, check_plan, parse_plan
from agent.state import HistoryEntry
from harness.data import CorpusSpec, prepare_corpus
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer, prepare_run_dir

TINY = ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=64)
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(small_corpus_dir):
    return prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")


def _train(out: Path, corpus, **kw) -> dict:
    cfg = TrainConfig(
        **{"batch_size": 4, "eval_bytes": 4000, "measure_latency": False, "device": "cpu", "log_every": 5, **kw}
    )
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

    capped = {
        "status": "capped",
        "fail_reason": "wall-clock cap of 10s reached after 5 of 9 tokens",
        "stopped_by": "wall_cap",
    }
    v = judge(parse_goal("best code model under 2 MB"), capped, 3.0, 0.01)
    assert v.decision == "crash" and "wall-clock cap" in v.reason


def test_train_worker_stops_at_its_cap_counted_from_its_start_and_exits_1(tmp_path, small_corpus_dir):
    arch = tmp_path / "arch.json"
    arch.write_text(TINY.to_json())
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas",
            "train",
            "--arch",
            str(arch),
            "--corpus",
            str(small_corpus_dir),
            "--budget",
            "50Mtok",
            "--max-seconds",
            "12",
            "--out",
            str(out),
            "--quiet",
            "--batch-size",
            "4",
            "--eval-bytes",
            "2000",
            "--device",
            "cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "stopped early" in done.stderr and "wall-clock cap of 12s" in done.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_by"] == "wall_cap" and m["budget_tokens"] == 50_000_000 and 0 <= m["tokens_trained"] < 50_000_000
    assert m["wall_s"] < 12  # the imports before training are inside the cap, not added to it


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--budget", "2s", "--max-seconds", "0"], "--max-seconds"),
        (["train", "--budget", "2s", "--max-seconds", "nan"], "--max-seconds"),
        (["train", "--budget", "5 parsecs"], "unknown budget unit"),
        (["run", "find the best Python code model under 1 MB", "--experiment-budget", "lots"], "cannot read budget"),
        (
            ["run", "find the best Python code model under 1 MB", "--experiment-budget", "0tok"],
            "budget must be positive",
        ),
        (["run", "find the best Python code model under 1 MB", "--budget", "2Mtok"], "wall-clock time"),
        (["run", "find the best Python code model under 1 MB", "--grace", "-5s"], "--grace"),
    ],
)
def test_bad_budgets_are_one_line_errors(tmp_path, args, message):
    result = runner.invoke(
        app, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else ["--runs-dir", str(tmp_path)])]
    )
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# plans follow the kind of the run's experiment budget


def _ctx(budget: str) -> PlanContext:
    return PlanContext(vocab_size=256, time_left_s=600, experiment_budget=budget, models=("e001",), has_incumbent=True)


def test_plan_budgets_follow_the_kind_of_the_experiment_budget():
    arch = ArchConfig().model_dump()
    train = {"kind": "train", "config": {"arch": arch}, "rationale": "baseline"}
    assert check_plan(parse_plan(train), _ctx("500ktok")).config.budget == "500ktok"  # left out: the run's budget
    assert check_plan(parse_plan(train), _ctx("45s")).config.budget == "45s"
    search = check_plan(parse_plan({"kind": "nas_search", "config": {"trials": 3}, "rationale": "x"}), _ctx("400ktok"))
    assert search.config.stage1_budget == "100000tok"
    cases = [
        (
            {**train, "config": {"arch": arch, "budget": "60s"}},
            "500ktok",
            "config.budget 60s is wall-clock time but this run counts experiment budgets in tokens",
        ),
        ({**train, "config": {"arch": arch, "budget": "2Mtok"}}, "60s", "config.budget 2Mtok is tokens"),
        (
            {"kind": "distill", "config": {"teacher": "e001", "arch": arch, "budget": "1m"}, "rationale": "x"},
            "1Mtok",
            "config.budget 1m",
        ),
        (
            {"kind": "nas_search", "config": {"stage1_budget": "10s"}, "rationale": "x"},
            "1Mtok",
            "config.stage1_budget 10s",
        ),
        (
            {
                "kind": "compress",
                "config": {"target": "e001", "prune": "wanda:0.5", "recover": "20s"},
                "rationale": "x",
            },
            "1Mtok",
            "config.recover 20s",
        ),
    ]
    for raw, budget, message in cases:
        with pytest.raises(PlanError, match=message):
            check_plan(parse_plan(raw), _ctx(budget))
    with_tokens = {**train, "config": {"arch": arch, "budget": "2Mtok"}}
    assert check_plan(parse_plan(with_tokens), _ctx("500ktok")).config.budget == "2Mtok"


def test_offline_plans_follow_the_kind_of_the_experiment_budget():
    from agent.goal import parse_goal
    from agent.offline import OfflinePlanner, budget_fraction

    planner = OfflinePlanner(parse_goal("find the best Python code model under 2 MB"), 256, "600ktok", 4)
    first = planner.propose([], None)
    assert first.kind == "train" and first.config.budget == "600ktok"
    history = [
        HistoryEntry.model_validate(h)
        for h in (
            {"id": "e001", "plan": first.model_dump(), "decision": "keep"},
            {
                "id": "e002",
                "plan": {**first.model_dump(), "config": {**first.model_dump()["config"], "seed": 1}},
                "decision": "repeat",
            },
        )
    ]
    search = planner.propose(history, history[0])
    assert search.kind == "nas_search" and search.config.stage1_budget == "150000tok"
    assert budget_fraction("40s", 4) == "10s" and budget_fraction("2ktok", 4) == "1000tok"


# ------------------------------------------------------------------------------------------------
# budgets hold: every experiment's limit is the smaller of its own and the time left (plus one grace period)


def test_each_experiment_is_limited_by_the_time_left(tmp_path, tiny_run):
    from agent.graph import ResearchAgent
    from agent.settings import RunSettings

    settings = RunSettings(
        run_id="t",
        goal="find the best Python code model under 2 MB",
        runs_dir=str(tmp_path),
        budget_s=300,
        grace_s=20,
        experiment_budget="500ktok",
    )
    agent = ResearchAgent(settings)
    arch = ArchConfig().model_dump()
    incumbent = HistoryEntry(
        id="e001",
        run_dir=str(tiny_run),
        decision="keep",
        val_bpb=3.0,
        plan=parse_plan({"kind": "train", "config": {"arch": ArchConfig().model_dump()}, "rationale": "x"}),
    )
    plans = [
        parse_plan({"kind": "train", "config": {"arch": arch, "budget": "500ktok"}, "rationale": "x"}),
        parse_plan({"kind": "distill", "config": {"arch": arch, "budget": "500ktok"}, "rationale": "x"}),
        parse_plan({"kind": "nas_search", "config": {"stage1_budget": "100ktok", "trials": 50}, "rationale": "x"}),
        parse_plan({"kind": "compress", "config": {"target": "incumbent", "int8": True}, "rationale": "x"}),
        parse_plan({"kind": "eval", "config": {"target": "incumbent"}, "rationale": "x"}),
    ]
    for elapsed, left in ((240.0, 60.0), (310.0, 0.0)):
        state = {"elapsed_s": elapsed, "incumbent": incumbent, "history": []}
        for plan in plans:
            cmd, timeout = agent._command(plan, Path("runs/e009"), state)
            assert timeout == left + 20, (plan.kind, timeout)
            # the harness's scoring of the model keeps its reserve (60 s at first)
            if plan.kind in ("train", "distill"):
                assert cmd[cmd.index("--max-seconds") + 1] == f"{max(left - 60.0, 1.0):.1f}"
            if plan.kind == "nas_search":
                assert cmd[cmd.index("--budget") + 1] == f"{max(left, 1.0):.1f}s" and "--cap-trials" in cmd
    state = {"elapsed_s": 0.0, "incumbent": incumbent, "history": []}  # plenty of time: the experiment's own limits
    timed = parse_plan({"kind": "train", "config": {"arch": arch, "budget": "20s"}, "rationale": "x"})
    cmd, timeout = agent._command(timed, Path("runs/e009"), state)
    assert timeout == 20 * 3 + 180 and float(cmd[cmd.index("--max-seconds") + 1]) == timeout - 60 - 20


@pytest.mark.slow
def test_a_run_whose_experiment_would_overrun_ends_by_budget_plus_grace(tmp_path, small_corpus_dir, monkeypatch):
    # The scoring time assumed before the first scoring is 40 s (a 60 s reserve), so a short budget leaves the first
    # training no cap worth starting (the run no longer starts an experiment that can only crash). Here it is 10 s
    # (a 15 s reserve): a 40 s budget gives the first training a 25 s cap, enough to start, and the run stays short.
    # The grace is the default 30 s: the search planned next gets the time left as its --budget, which its own
    # clock starts after its start-up (imports, the corpus: ~10 s at load 7), so a 10 s grace killed it at its timeout
    monkeypatch.setattr(agent_graph, "FIRST_SCORING_S", 10.0)
    budget_s, grace_s = 40, 30
    t0 = time.monotonic()
    result = runner.invoke(
        app,
        [
            "run",
            "find the best Python code model under 2 MB",
            "--run-id",
            "o1",
            "--runs-dir",
            str(tmp_path),
            "--budget",
            f"{budget_s}s",
            "--grace",
            f"{grace_s}s",
            "--experiment-budget",
            "50Mtok",
            "--corpus",
            str(small_corpus_dir),
            "--eval-bytes",
            "4000",
        ],
    )
    wall = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "o1" / "workspace" / "results.tsv").read_text().splitlines()
    # the first experiment cut short (its cap leaves the harness's scoring its reserve);
    # nothing after it finishes either
    assert len(rows) >= 2 and "wall-clock cap" in rows[1] and all("\tcrash\t" in r for r in rows[1:])
    m = json.loads((tmp_path / "o1" / "workspace" / "runs" / "e001" / "metrics.json").read_text())
    assert m["stopped_by"] == "wall_cap" and m["budget_tokens"] == 50_000_000 and 0 <= m["tokens_trained"] < 50_000_000
    assert m["max_seconds"] <= budget_s
    assert (tmp_path / "o1" / "report.md").is_file()
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    # 50M tokens take hours here: the run's budget is what ended it, within one grace period (the run's own clock,
    # which starts when the set-up is done and its research loop starts)
    assert summary["elapsed_s"] < budget_s + grace_s, summary
    assert wall < budget_s + grace_s + 30, wall  # the set-up (imports, the workspace) on top


def test_a_search_caps_its_token_trials_at_its_wall_clock_budget(tmp_path, small_corpus_dir):
    """What the agent gives a nas_search experiment: --budget (the time left). Trials of a token budget far beyond it
    stop at what is left of it, recorded as capped, and the search ends by its budget plus the trials' last step."""
    import csv

    from nas.search import Search, SearchConfig

    out = tmp_path / "s"
    cfg = SearchConfig(
        out=str(out),
        space="tiny",
        trials=2,
        budget="20s",
        cap_trials=True,
        stage1_budget="50Mtok",
        stage2_budget="none",
        eval_bytes=4000,
        batch_size=8,
        workers=1,
        population=3,
        screen=False,
        corpus=CorpusSpec(source=str(small_corpus_dir)),
    )
    summary = Search(cfg, live=False).run()
    with open(out / "results.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    trained = [r for r in rows if r["status"] not in ("rejected", "not_run", "")]
    assert trained and all(r["status"] == "capped" for r in trained), [
        (r["status"], r["state"], r["fail_reason"]) for r in rows
    ]
    for r in trained:
        m = json.loads((out / "trials" / f"s1-{int(r['trial']):05d}" / "metrics.json").read_text())
        assert m["stopped_by"] == "wall_cap" and m["max_seconds"] <= 20 and 0 <= m["tokens_trained"] < 50_000_000
    assert summary["elapsed_s"] < 20 + 30, summary["elapsed_s"]  # not the hours 50M tokens would take


def test_distill_worker_stops_at_its_cap(tmp_path, small_corpus_dir, tiny_run):
    out = tmp_path / "kd"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "distill",
            "--teacher",
            str(tiny_run),
            "--student",
            str(tiny_run / "arch.json"),
            "--budget",
            "50Mtok",
            "--max-seconds",
            "12",
            "--out",
            str(out),
            "--corpus",
            str(small_corpus_dir),
            "--batch-size",
            "4",
            "--eval-bytes",
            "2000",
            "--device",
            "cpu",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "capped" and m["stopped_by"] == "wall_cap" and m["max_seconds"] == 12
    assert 0 < m["tokens_trained"] < 50_000_000 and m["kd_teacher"]
