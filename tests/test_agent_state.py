"""The agent's checkpointed state: its models survive the real checkpointer's serializer, and an old checkpoint
(plans and history as dicts) is refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.edits import EditAttempt, EditSummary
from agent.graph import NODES, build_graph, graph_config, open_checkpointer
from agent.judge import Verdict
from agent.plans import parse_plan
from agent.state import HistoryEntry, current_edit, refuse_old_state
from harness.errors import UserError
from nas.space import ArchConfig


def _edit() -> EditSummary:
    return EditSummary(
        ok=True,
        editor="claude-code",
        files=["nas/model.py"],
        cost_usd=0.12,
        turns=3,
        patch="/runs/r1/workspace/runs/e001/edit/edit.patch",
        attempts=[EditAttempt(editor="claude-code", ok=True, wall_s=40.5, transcript="/t.jsonl")],
    )


def _entry() -> HistoryEntry:
    plan = parse_plan(
        {
            "kind": "train",
            "config": {"arch": ArchConfig().model_dump(), "budget": "8ktok"},
            "rationale": "r",
            "code_change": "add QK-norm",
        }
    )
    return HistoryEntry(
        id="e001",
        plan=plan,
        decision="repeat",
        val_bpb=3.0,
        metrics={"params": 10, "status": "ok"},
        edit=_edit(),
        noise_bpb=0.01,
        noise_source="measured",
    )


def test_the_state_models_round_trip_through_the_checkpointer_without_a_warning(tmp_path: Path, caplog) -> None:
    entry = _entry()
    state = {
        "plan": entry.plan,
        "verdict": Verdict(decision="repeat", reason="noise", metric=3.0, noise=0.01),
        "history": [entry],
        "incumbent": entry,
        "edit": _edit(),
    }
    serde = open_checkpointer(tmp_path).serde
    with caplog.at_level(logging.WARNING):
        back = serde.loads_typed(serde.dumps_typed(state))
    assert back == state and isinstance(back["history"][0].plan, type(entry.plan))
    assert isinstance(back["edit"], EditSummary) and isinstance(back["history"][0].edit.attempts[0], EditAttempt)
    assert not [r for r in caplog.records if "unregistered" in r.getMessage() or "Blocked" in r.getMessage()]


@pytest.mark.parametrize(
    "old",
    [
        {"plan": {"kind": "train"}},
        {"history": [{"id": "e001"}]},
        {"incumbent": {"id": "e001"}},
        {"verdict": {"decision": "keep"}},
    ],
)
def test_an_old_checkpoint_is_refused_in_one_line(old: dict) -> None:
    with pytest.raises(UserError, match="older version") as err:
        refuse_old_state(old, "r1")  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    refuse_old_state({"history": [_entry()], "incumbent": _entry(), "plan": None}, "r1")  # the current shape passes


def test_resuming_an_old_checkpoint_raises_the_one_line_error_out_of_the_graph(tmp_path: Path) -> None:
    """Through the real graph and checkpointer: a checkpoint whose state has the old shape stops at its next node
    with the UserError (which the CLI prints as one line), before the node reads it."""
    ran: list[str] = []

    def node(name: str):
        def run(state: dict) -> dict:
            ran.append(name)
            return {}

        return run

    fake = SimpleNamespace(s=SimpleNamespace(run_id="old1"), **{name: node(name) for name in NODES})
    graph = build_graph(fake).compile(checkpointer=open_checkpointer(tmp_path))  # type: ignore[arg-type]
    config = graph_config("old1")
    old_entry = {"id": "e001", "plan": {"kind": "train", "config": {}}, "decision": "keep"}
    graph.update_state(config, {"plan": old_entry["plan"], "history": [old_entry], "step": 1}, as_node="plan")
    with pytest.raises(UserError, match="older version"):
        graph.invoke(None, config)
    assert ran == []


#: the edit summary as earlier versions checkpointed it (agent.editing.edit_summary returned this dict)
OLD_EDIT = {
    "ok": False,
    "editor": "gui",
    "files": [],
    "error": "claude-code: no binary; gui: no display",
    "cost_usd": 0.0,
    "turns": None,
    "session_id": None,
    "patch": None,
    "attempts": [
        {"editor": "claude-code", "ok": False, "error": "no binary", "wall_s": 0.01, "transcript": None},
        {"editor": "gui", "ok": False, "error": "no display", "wall_s": 0.02, "transcript": None},
    ],
}


def test_an_edit_summary_checkpointed_as_a_dict_still_loads(tmp_path: Path) -> None:
    # in a history entry (rebuilt from its dump by the checkpointer) and at the state's top level (a plain dict)
    serde = open_checkpointer(tmp_path).serde
    entry = _entry().model_dump()
    entry["edit"] = OLD_EDIT
    back = serde.loads_typed(serde.dumps_typed({"history": [HistoryEntry.model_validate(entry)], "edit": OLD_EDIT}))
    old = back["history"][0].edit
    assert isinstance(old, EditSummary) and not old.ok and [a.editor for a in old.attempts] == ["claude-code", "gui"]
    edit = current_edit(back)
    assert isinstance(edit, EditSummary) and edit.error == OLD_EDIT["error"] and edit == old
    refuse_old_state(back, "r1")  # nothing else is old: it resumes
    assert current_edit({}) is None
