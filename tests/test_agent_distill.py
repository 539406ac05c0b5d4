"""The agent's distill and eval plan kinds, driven end to end by a scripted LLM planner on 127.0.0.1."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.offline import OfflinePlanner
from agent.plans import DistillPlan, EvalPlan, PlanContext, PlanError, check_plan, parse_plan, plan_tool_schema
from agent.state import HistoryEntry
from sandbox.workspace import Workspace
from tests.llm_server import ScriptedLLMServer, anthropic_tool
from tests.test_llm import GOAL, SMALL, _cli, train_plan

runner = CliRunner()


def _distill(teacher: str, **over) -> dict:
    return {
        "kind": "distill",
        "config": {"teacher": teacher, "arch": SMALL.model_dump(), "loss": "rkl", "budget": "16ktok", **over},
        "rationale": f"distil {teacher} into the small shape",
    }


def _eval(target: str) -> dict:
    return {"kind": "eval", "config": {"target": target, "limit": 3, "max_new_tokens": 16}, "rationale": "code ability"}


def test_distill_and_eval_plans_are_checked_against_the_history() -> None:
    ctx = PlanContext(vocab_size=256, max_mb=1.0, time_left_s=600, models=("e001",), has_incumbent=True)
    assert isinstance(check_plan(parse_plan(_distill("e001")), ctx), DistillPlan)
    assert isinstance(check_plan(parse_plan(_eval("incumbent")), ctx), EvalPlan)
    with pytest.raises(PlanError, match="not a finished train/distill experiment"):
        check_plan(parse_plan(_distill("e007")), ctx)
    with pytest.raises(PlanError, match="nothing has been kept"):
        check_plan(parse_plan(_eval("incumbent")), ctx.model_copy(update={"has_incumbent": False}))
    with pytest.raises(PlanError, match="loss"):
        parse_plan(_distill("e001", loss="mse"))
    with pytest.raises(PlanError, match="sparsity must be in"):
        parse_plan({"kind": "compress", "config": {"target": "e001", "prune": "wanda:2"}, "rationale": "x"})
    with pytest.raises(PlanError, match="int8 and/or prune"):
        check_plan(parse_plan({"kind": "compress", "config": {"target": "e001", "int8": False}, "rationale": "x"}), ctx)
    assert set(plan_tool_schema()["properties"]["kind"]["enum"]) == {
        "train",
        "nas_search",
        "distill",
        "eval",
        "compress",
    }


def test_offline_planner_distils_then_evaluates_the_incumbent() -> None:
    planner = OfflinePlanner(GOAL, 256, "16ktok", 2)
    inc = {"id": "e003", "plan": train_plan(), "decision": "keep", "val_bpb": 3.0, "run_dir": "/nowhere"}
    history = [
        inc,
        {"id": "e004r", "plan": train_plan(seed=1), "decision": "repeat", "val_bpb": 3.01},
        {
            "id": "e004",
            "plan": {"kind": "nas_search", "config": {}, "rationale": "x"},
            "decision": "keep",
            "run_dir": "/nowhere",
        },
    ]
    first = _propose(planner, history, inc)
    assert isinstance(first, DistillPlan) and first.config.teacher == "e003" and first.config.arch == SMALL
    history.append({"id": "e005", "plan": first.model_dump(), "decision": "discard", "val_bpb": 3.1})
    second = _propose(planner, history, inc)
    assert isinstance(second, EvalPlan) and second.config.target == "e003"
    history.append({"id": "e006", "plan": second.model_dump(), "decision": "keep"})
    third = _propose(planner, history, inc)
    assert third.kind == "compress" and third.config.target == "e003" and third.config.int8


def _propose(planner: OfflinePlanner, history: list[dict], inc: dict) -> Any:
    return planner.propose([HistoryEntry.model_validate(h) for h in history], HistoryEntry.model_validate(inc))


@pytest.mark.slow
def test_llm_planner_runs_distill_and_eval_experiments(tmp_path, small_corpus_dir, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    compress = {
        "kind": "compress",
        "config": {"target": "e001", "int8": True, "prune": "wanda:0.5", "recover": "4ktok"},
        "rationale": "smaller",
    }
    script = [train_plan(), _distill("e009"), _distill("e001"), _eval("incumbent"), compress]

    def respond(path: str, body: dict):
        plan = script.pop(0) if script else _eval("e001")
        if not script:  # the last scripted plan: stop after it (the loop's own re-runs of close calls come in between)
            (tmp_path / "kd" / "STOP").write_text("")
        return anthropic_tool(body["tools"][0]["name"], plan)

    monkeypatch.chdir(tmp_path)  # a relative --runs-dir, as in the README: the evaluation's scorer runs elsewhere
    with ScriptedLLMServer(respond) as srv:
        result = runner.invoke(
            app,
            _cli(
                Path("."),
                small_corpus_dir,
                "kd",
                "--base-url",
                srv.anthropic_url,
                "--judge",
                "offline",
                "--max-experiments",
                "9",
            ),
        )
    assert result.exit_code == 0, result.output
    ws = tmp_path / "kd" / "workspace"
    rows = list(csv.DictReader(open(ws / "results.tsv"), delimiter="\t"))
    assert rows[1]["planner"] == "rule" and rows[1]["decision"] == "repeat"  # the loop's noise repeat of e001
    planned = {r["kind"]: r["experiment"] for r in reversed(rows) if r["planner"] != "rule"}  # the first of each kind
    assert [r["kind"] for r in rows if r["planner"] != "rule"] == ["train", "distill", "eval", "compress"]
    assert all(
        r["kind"] == "distill" for r in rows if r["planner"] == "rule" and r["experiment"] != "e002"
    )  # close-call re-runs
    assert "not a finished train/distill experiment" in (ws / "journal.md").read_text()  # e009 went back to the planner
    distilled = json.loads((ws / "runs" / planned["distill"] / "metrics.json").read_text())
    assert (
        distilled["status"] == "ok" and distilled["kd_loss"] == "rkl" and distilled["kd_teacher"].startswith("autonas:")
    )
    evaluated = json.loads((ws / "runs" / planned["eval"] / "metrics.json").read_text())
    assert evaluated["humaneval_problems"] == 3 and 0.0 <= evaluated["humaneval_pass_at_1"] <= 1.0
    commits = {e.trailers.get("experiment"): e for e in Workspace.open(ws, "kd").experiments()}
    assert planned["eval"] in commits and "humaneval-pass-at-1" in commits[planned["eval"]].trailers
    distill_kept = any(
        r["kind"] == "distill" and r["decision"] == "keep" for r in rows
    )  # else its close calls ended discarded
    assert (ws / "configs" / "distill.json").is_file() == distill_kept and (ws / "configs" / "eval.json").is_file()
    compressed = json.loads((ws / "runs" / planned["compress"] / "metrics.json").read_text())
    assert (
        compressed["prune_method"] == "wanda"
        and "val_bpb_recovered" in compressed
        and compressed["int8_linear_ratio"] < 0.3
    )
    assert rows[-1]["decision"] == "keep" and "size-on-disk-int8-bytes" in commits[planned["compress"]].trailers
