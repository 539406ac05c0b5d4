"""RunSettings: budgets are the person's strings, read in one place; a run.json of an earlier version (seconds
under budget_s, grace_s, editor_timeout_s) still loads as the same run, and a bad budget in run.json is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.settings import RunSettings
from harness.errors import UserError

OLD_RUN_JSON = {
    "run_id": "old",
    "goal": "best code model under 1 MB",
    "runs_dir": "runs",
    "budget_s": 1800.0,
    "experiment_budget": "16ktok",
    "grace_s": 2.5,
    "editor_timeout_s": 900.0,
    "search_trials": 2,
}


def test_budgets_are_kept_as_written_and_read_as_seconds() -> None:
    s = RunSettings(run_id="r", goal="g", budget="1.5h", grace="45s", editor_timeout="2m")
    assert (s.budget_s, s.grace_s, s.editor_timeout_s) == (5400.0, 45.0, 120.0)
    stored = json.loads(s.model_dump_json())
    assert stored["budget"] == "1.5h" and "budget_s" not in stored and stored["experiment_budget"] == "500ktok"
    assert RunSettings.model_validate_json(s.model_dump_json()) == s


def test_an_earlier_run_json_in_seconds_loads_as_the_same_budgets() -> None:
    s = RunSettings.model_validate_json(json.dumps(OLD_RUN_JSON))
    assert (s.budget_s, s.grace_s, s.editor_timeout_s) == (1800.0, 2.5, 900.0)
    assert (s.budget, s.grace, s.experiment_budget) == ("1800s", "2.5s", "16ktok")
    assert RunSettings.model_validate_json(s.model_dump_json()) == s  # and it is saved in today's form


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("budget", "2Mtok", "--budget is wall-clock time"),
        ("grace", "soon", "--grace: cannot read budget"),
        ("experiment_budget", "99999h", "--experiment-budget '99999h' is more than"),
        ("editor_timeout", "0s", "positive"),
    ],
)
def test_a_bad_budget_is_refused_in_the_words_of_its_flag(field: str, value: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        RunSettings(run_id="r", goal="g", **{field: value})


def test_status_of_an_old_run_and_of_a_run_json_with_a_bad_budget(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({**OLD_RUN_JSON, "runs_dir": str(tmp_path)}))
    result = CliRunner().invoke(app, ["status", "old", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "0 experiments recorded" in result.output
    (run_dir / "run.json").write_text(
        json.dumps({**OLD_RUN_JSON, "runs_dir": str(tmp_path), "budget_s": "ten minutes"})
    )
    result = CliRunner().invoke(app, ["status", "old", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "run.json is corrupt (--budget: cannot read budget 'ten minutes'" in result.output
    assert "Traceback" not in result.output
