"""A search plan with rungs: its optional fields, their one-line errors, the worker command they make (and that the
worker runs it), old plans unchanged byte for byte, and the offline planner choosing rungs only where the lowest
rung ranks architectures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.goal import parse_goal
from agent.offline import MIN_RUNG_TOKENS, RUNGS, OfflinePlanner
from agent.plans import (
    SEARCH_RUNG_FIELDS,
    PlanContext,
    PlanError,
    SearchPlan,
    WorkerSetup,
    check_plan,
    parse_plan,
)
from agent.state import HistoryEntry
from nas.space import get_space

REPO = Path(__file__).resolve().parents[1]
SETUP = WorkerSetup(tokenizer="byte", corpus="stdlib", eval_bytes=4000, resolve_model=lambda ref: ref)


def _ctx(budget: str = "900ktok") -> PlanContext:
    return PlanContext(vocab_size=256, time_left_s=3600, experiment_budget=budget)


def _search(**config: object) -> SearchPlan:
    plan = parse_plan({"kind": "nas_search", "config": config, "rationale": "x"})
    assert isinstance(plan, SearchPlan)
    return plan


def _flags(cmd: list[str]) -> dict[str, str | None]:
    """``--name value`` and bare ``--name`` of a command line."""
    out: dict[str, str | None] = {}
    for i, word in enumerate(cmd):
        if word.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            out[word] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_an_old_plan_makes_the_command_and_files_it_always_made(tmp_path: Path) -> None:
    """The command line of a plan without rung fields, spelled out: the worker contract the agent had before the
    rung fields existed (checked against that version of agent/plans.py when they were added)."""
    plan = check_plan(_search(trials=5, strategy="random", seed=3, max_mb=2.0), _ctx("400ktok"))
    cmd, limit = plan.worker_command(SETUP, tmp_path / "e002")
    assert cmd == [
        sys.executable, "-m", "nas", "nas", "search",
        "--out", str(tmp_path / "e002"), "--space", "default", "--objectives", "bpb,bytes_int8",
        "--strategy", "random", "--trials", "5", "--stage1", "100000tok", "--stage2", "none", "--seed", "3",
        "--tokenizer", "byte", "--corpus", "stdlib", "--eval-bytes", "4000", "--quiet", "--max-mb", "2.0",
    ]  # fmt: skip
    assert limit == 600.0 * 5 + 300
    # its dumps (configs/search.json, the resume stamp, the history) have exactly the fields they had
    old_fields = ["space", "objectives", "strategy", "trials", "stage1_budget", "seed", "max_mb", "max_latency_ms"]
    assert list(plan.config.model_dump()) == old_fields
    assert list(json.loads(plan.own_config_files()["configs/search.json"])) == old_fields
    again = HistoryEntry.model_validate({"id": "e002", "plan": plan.model_dump(), "decision": "discard"})
    assert again.plan.model_dump() == plan.model_dump()
    assert again.plan.worker_command(SETUP, tmp_path / "e002")[0] == cmd


def test_rung_fields_become_the_workers_flags_and_survive_the_history(tmp_path: Path) -> None:
    plan = check_plan(
        _search(
            strategy="evolution",
            rungs="1/9,1/3,1",
            token_budget="1800ktok",
            replicates=1,
            inherit=True,
            population=4,
            trials=8,
        ),
        _ctx("900ktok"),
    )
    assert plan.config.max_budget == "900ktok"  # left out: one experiment's budget is the last rung
    cmd, _ = plan.worker_command(SETUP, tmp_path / "e003")
    flags = _flags(cmd)
    assert flags["--rungs"] == "1/9,1/3,1" and flags["--max-budget"] == "900ktok"
    assert flags["--token-budget"] == "1800ktok" and flags["--replicates"] == "1"
    assert "--inherit" in flags and flags["--inherit"] is None and flags["--population"] == "4"
    assert "rungs 1/9,1/3,1 of 900ktok" in plan.summary() and "inherit" in plan.summary()
    again = HistoryEntry.model_validate({"id": "e003", "plan": plan.model_dump(), "decision": "discard"})
    assert again.plan.worker_command(SETUP, tmp_path / "e003")[0] == cmd
    assert json.loads(plan.own_config_files()["configs/search.json"])["rungs"] == "1/9,1/3,1"
    assert set(SEARCH_RUNG_FIELDS) <= set(plan.config.model_dump())


@pytest.mark.parametrize(
    ("config", "ctx_budget", "words"),
    [
        ({"max_budget": "900ktok"}, "900ktok", "belongs to a search with rungs"),
        ({"replicates": 1}, "900ktok", "belongs to a search with rungs"),
        ({"inherit": True}, "900ktok", "needs config.strategy evolution"),
        ({"population": 4}, "900ktok", "belongs to config.strategy evolution"),
        ({"rungs": "1/3,1/9,1"}, "900ktok", "fractions must increase"),
        ({"rungs": "1/3"}, "900ktok", "at least two"),
        ({"rungs": "1/3,1", "max_budget": "60s"}, "900ktok", "is wall-clock time"),
        ({"rungs": "1/3,1"}, "60s", "counts experiment budgets in wall-clock time"),
        ({"rungs": "1/9,1/3,1", "token_budget": "50ktok"}, "900ktok", "less than one trial of the lowest rung"),
        ({"token_budget": "30s"}, "900ktok", "token_budget 30s is wall-clock time"),
        ({"token_budget": "900ktok", "stage1_budget": "10s"}, "60s", "stage1_budget in tokens"),
        ({"rungs": "1/3,1", "replicates": 99}, "900ktok", "replicates"),
    ],
)
def test_bad_rung_fields_are_one_line_plan_errors(config: dict[str, object], ctx_budget: str, words: str) -> None:
    with pytest.raises(PlanError) as err:
        check_plan(parse_plan({"kind": "nas_search", "config": config, "rationale": "x"}), _ctx(ctx_budget))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_offline_planner_uses_rungs_only_where_the_lowest_rung_ranks() -> None:
    goal = parse_goal("find the best Python code model under 2 MB")
    first_rung = 9 * MIN_RUNG_TOKENS  # the smallest experiment whose 1/9 rung is MIN_RUNG_TOKENS
    cases = [(f"{first_rung}tok", True), (f"{first_rung - 9}tok", False), ("500ktok", False), ("60s", False)]
    for budget, rungs in cases:
        planner = OfflinePlanner(goal, 256, budget, 6)
        baseline = planner.propose([], None)
        history = [HistoryEntry.model_validate({"id": "e001", "plan": baseline.model_dump(), "decision": "keep"})]
        search = planner.propose(history, history[0])
        assert isinstance(search, SearchPlan)
        c = check_plan(search, _ctx(budget)).config  # what the graph checks before running it
        if rungs:
            assert c.rungs == RUNGS and c.max_budget == c.token_budget == budget
            assert c.strategy == "random" and c.rungs == "1/9,1" and c.replicates == 1
            assert not c.inherit and c.population is None
            assert c.max_mb == 2.0
        else:
            assert all(getattr(c, f) in (None, False) for f in SEARCH_RUNG_FIELDS), budget
            assert c.strategy == "nsga2"


@pytest.mark.slow
def test_the_worker_runs_a_rung_plans_command(tmp_path: Path, small_corpus_dir: Path) -> None:
    """The command a rung plan makes is one the search accepts and runs to the end, within its token budget."""
    space = tmp_path / "space.json"
    space.write_text(get_space("tiny").model_copy(update={"context_length": (64,)}).model_dump_json())
    plan = check_plan(
        _search(
            space=str(space),
            strategy="evolution",
            rungs="1/4,1",
            max_budget="8ktok",
            token_budget="30ktok",
            replicates=1,
            inherit=True,
            population=2,
            trials=4,
        ),
        _ctx("8ktok"),
    )
    setup = WorkerSetup(tokenizer="byte", corpus=str(small_corpus_dir), eval_bytes=4000, resolve_model=lambda r: r)
    out = tmp_path / "e002"
    cmd, _ = plan.worker_command(setup, out)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rungs = json.loads((out / "rungs.json").read_text())
    assert rungs["rungs"] == "1/4,1" and rungs["max_budget"] == "8ktok"
    with open(out / "results.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    trained = [r for r in rows if r["status"] not in ("rejected", "duplicate", "not_run", "lost")]
    assert [r for r in trained if r["stage"] == "1" and not r["replicate"]]
    assert sum(int(r["tokens_trained"] or 0) for r in trained) <= 30_000
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


def test_the_offline_planners_trainings_take_the_runs_seed() -> None:
    """``autonas run --seed`` makes another sample of the whole strategy: its trainings too, not only the search."""
    goal = parse_goal("find the best Python code model under 2 MB")
    for seed in (0, 3):
        planner = OfflinePlanner(goal, 256, "500ktok", 6, seed=seed)
        baseline = planner.propose([], None)
        history = [HistoryEntry.model_validate({"id": "e001", "plan": baseline.model_dump(), "decision": "keep"})]
        assert baseline.config.seed == seed and planner.propose(history, history[0]).config.seed == seed
