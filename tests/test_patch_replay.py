"""A stored code change replays exactly: the diff is kept byte for byte (blank context lines at its end, CRLF
lines), found by absolute path from any working folder, and a repeat whose change the tree already holds runs
without an edit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import git
import pytest

from agent.editing import IN_TREE, PATCH_NAME, apply_code_change, edit_summary
from agent.plans import parse_plan
from agent.prompting import Prompts
from agent.settings import RunSettings
from agent.state import HistoryEntry
from ccaa.editor import BuiltinEditor, EditInstruction, patch_bytes

ORIGINAL = "def f():\n    return 1\n\n\n\n"  # the edited line is followed by blank lines only
CHANGED = "def f():\n    return 2\n\n\n\n"
CRLF_ORIGINAL = "a = 1\r\nb = 2\r\n\r\n\r\n"
CRLF_CHANGED = "a = 1\r\nb = 3\r\n\r\n\r\n"


def _workspace(root: Path) -> git.Repo:
    root.mkdir(parents=True)
    repo = git.Repo.init(root)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "t").set_value("user", "email", "t@t")
        cw.set_value("core", "autocrlf", "false")
    (root / ".gitignore").write_text("runs/\n")
    (root / "nas").mkdir()
    (root / "nas" / "model.py").write_text(ORIGINAL)
    (root / "nas" / "crlf.py").write_bytes(CRLF_ORIGINAL.encode())
    repo.index.add([".gitignore", "nas/model.py", "nas/crlf.py"])
    repo.index.commit("start")
    return repo


def _first_edit(ws: Path, exp_id: str) -> HistoryEntry:
    """The change an editor made once, stored as the agent stores it, then undone (the experiment was discarded)."""
    result = BuiltinEditor().edit(ws, EditInstruction(files={"nas/model.py": CHANGED, "nas/crlf.py": CRLF_CHANGED}))
    assert result.ok
    log_dir = ws / "runs" / exp_id / "edit"
    log_dir.mkdir(parents=True)
    (log_dir / PATCH_NAME).write_bytes(patch_bytes(result.diff))
    return HistoryEntry(id=exp_id, plan=_plan("first"), decision="close", edit=edit_summary([result], log_dir))


def _plan(rationale: str) -> Any:
    return parse_plan({"kind": "train", "config": {"arch": {}}, "code_change": "return 2", "rationale": rationale})


def test_a_diff_ending_in_blank_context_lines_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "run" / "workspace"
    repo = _workspace(ws)
    monkeypatch.chdir(tmp_path / "run")  # the agent's working folder is not the workspace
    first = _first_edit(Path("workspace"), "e001")  # a relative workspace, as with a relative --runs-dir
    assert first.edit is not None
    assert first.edit.patch is not None
    stored = Path(first.edit.patch)
    assert stored.is_absolute() and stored.is_file()
    raw = stored.read_bytes()
    assert raw.endswith(b"\n \n \n \n") or raw.endswith(b"\n \r\n \r\n")  # the blank context lines are kept
    assert b"b = 3\r\n" in raw  # CR characters are kept
    repo.git.checkout("--", ".")  # the close call was discarded: the tree is back at HEAD
    assert (ws / "nas" / "model.py").read_text() == ORIGINAL

    monkeypatch.chdir(tmp_path)  # replayed from yet another folder
    settings = RunSettings(run_id="r", goal="best code model under 1 MB", editors=("claude-code",))
    plan = _plan("re-run")
    results = apply_code_change(settings, Prompts(None), plan, "e002", "t", ws, ws / "runs" / "e002" / "edit", [first])
    assert [r.editor for r in results] == ["replay"] and results[-1].ok, results[-1].error
    assert (ws / "nas" / "model.py").read_text() == CHANGED
    assert (ws / "nas" / "crlf.py").read_bytes() == CRLF_CHANGED.encode()
    again = ws / "runs" / "e002" / "edit" / PATCH_NAME
    assert again.read_bytes() == raw  # the replay's own record is the same change, byte for byte

    # the change is now committed (the re-run was kept): a further repeat makes no edit at all
    repo.git.add("-A")
    repo.index.commit("e002 kept")
    head = repo.head.commit.hexsha
    second = first.model_copy(update={"id": "e002", "edit": edit_summary(results, ws / "runs" / "e002" / "edit")})
    results = apply_code_change(
        settings, Prompts(None), plan, "e003", "t", ws, ws / "runs" / "e003" / "edit", [first, second]
    )
    assert [r.editor for r in results] == [IN_TREE] and results[-1].ok and results[-1].files_changed == ()
    assert not repo.is_dirty(untracked_files=False) and repo.head.commit.hexsha == head
    assert (ws / "runs" / "e003" / "edit" / PATCH_NAME).read_bytes() == raw


def test_a_stored_change_that_no_longer_applies_fails_the_edit(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    repo = _workspace(ws)
    first = _first_edit(ws, "e001")
    repo.git.checkout("--", ".")
    (ws / "nas" / "model.py").write_text("def f():\n    return 7\n")  # someone else changed the same lines
    repo.git.add("-A")
    repo.index.commit("other")
    settings = RunSettings(run_id="r", goal="best code model under 1 MB", editors=("claude-code",))
    plan = _plan("re-run")
    results = apply_code_change(settings, Prompts(None), plan, "e002", "t", ws, ws / "runs" / "e002" / "edit", [first])
    assert not results[-1].ok and "no longer applies" in (results[-1].error or "")
    assert (ws / "nas" / "model.py").read_text() == "def f():\n    return 7\n"  # the tree is as it was
    assert not (ws / "runs" / "e002" / "edit" / PATCH_NAME).exists()
