"""The agent with a code editor, end to end: an LLM planner (scripted, on 127.0.0.1) asks for code changes, the real
Claude Code CLI makes them in the run's workspace, the worker trains with the changed code, a failed edit fails
its experiment and the run goes on."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path
from typing import Any

import git
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.editing import parse_editors
from agent.plans import PlanContext, PlanError, check_plan, parse_plan
from harness.errors import UserError
from harness.model_code import seed_files
from nas.space import ArchConfig
from tests.llm_server import Reply, ScriptedLLMServer, anthropic_tool
from tests.test_ccaa import ToolTurns, needs_claude, tool

runner = CliRunner()
SMALL = ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128)
# The edited code also probes its confinement: the home's canary, a write into the workspace (its code), the network.
MARKER = (
    'import os, socket, sys\nprint("WORKSPACE-CODE-MARKER", file=sys.stderr)\n'
    'home = os.path.exists(os.path.join(os.path.expanduser("~"), "canary.txt"))\n'
    'try:\n    open(os.path.join(os.getcwd(), "escaped.txt"), "w").write("x"); wrote = True\n'
    "except OSError:\n    wrote = False\n"
    'try:\n    socket.create_connection(("127.0.0.1", int(os.environ.get("AUTONAS_TEST_PORT", "9"))), timeout=1);'
    " net = True\n"
    "except OSError:\n    net = False\n"
    'print("CONFINED-PROBE home=%s wrote=%s net=%s" % (home, wrote, net), file=sys.stderr)\n'
)

SPACE_WITH_MARKER = seed_files()["nas/space.py"].decode() + "\n" + MARKER


def train_plan(arch: ArchConfig = SMALL, seed: int = 0, **over: Any) -> dict:
    plan = {
        "kind": "train",
        "config": {"arch": arch.model_dump(), "budget": "16ktok", "seed": seed},
        "rationale": "a small shape",
    }
    plan.update(over)
    return plan


def test_editor_chain_and_code_change_validation() -> None:
    assert parse_editors("claude-code, gui") == ("claude-code", "gui")
    for bad in ("vim", "", "gui,gui"):
        with pytest.raises(UserError):
            parse_editors(bad)
    plan = parse_plan(train_plan(code_change="add QK-norm to attention in nas/model.py"))
    with pytest.raises(PlanError, match="needs a code editor"):
        check_plan(plan, PlanContext(vocab_size=256, time_left_s=600))
    assert check_plan(plan, PlanContext(vocab_size=256, time_left_s=600, code_editing=True)).code_change
    compress = parse_plan(
        {"kind": "compress", "config": {"target": "incumbent", "int8": True}, "rationale": "x", "code_change": "y"}
    )
    with pytest.raises(PlanError, match="not compress"):
        check_plan(compress, PlanContext(vocab_size=256, time_left_s=600, code_editing=True, has_incumbent=True))


def test_unknown_editor_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "best code model under 1 MB", "--editor", "emacs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--editor 'emacs'" in result.output and not any(tmp_path.iterdir())


def _research(planner_calls: list[str]):
    """Planner: a code change Claude Code makes, then one it fails at, then a plain train plan. Judge: keep.
    Claude Code: appends the marker to nas/space.py for the first instruction, answers in words to the second."""
    first = ToolTurns(
        [
            [tool("Read", {"file_path": "WS/nas/space.py"}, 1)],
            [tool("Write", {"file_path": "WS/nas/space.py", "content": SPACE_WITH_MARKER}, 2)],
        ]
    )
    second = ToolTurns([[{"type": "text", "text": "I would rather not."}]])

    def respond(path: str, body: dict) -> Reply:
        names = [t["name"] for t in body.get("tools", [])]
        if names == ["submit_verdict"]:
            return anthropic_tool("submit_verdict", {"decision": "keep", "reason": "better on the goal"})
        if names == ["submit_plan"]:
            planner_calls.append("plan")
            n = len(planner_calls)
            if n == 1:
                return anthropic_tool(
                    "submit_plan", train_plan(code_change="print a marker from nas/space.py", rationale="marker")
                )
            if n == 2:
                return anthropic_tool(
                    "submit_plan", train_plan(seed=1, code_change="rewrite the trainer in Rust", rationale="rust")
                )
            return anthropic_tool(
                "submit_plan",
                train_plan(ArchConfig(n_layers=2, d_model=96, n_heads=3, n_kv_heads=3, d_ff=256), rationale="plain"),
            )
        text = json.dumps(body.get("messages", []))
        script = first if "print a marker" in text else second
        ws = respond.workspace  # type: ignore[attr-defined]
        for turn in script.turns:
            for block in turn:
                if block.get("type") == "tool_use":
                    block["input"] = {
                        k: (v.replace("WS", str(ws)) if isinstance(v, str) else v) for k, v in block["input"].items()
                    }
        return script(path, body)

    return respond


@needs_claude
@pytest.mark.slow
def test_agent_run_with_claude_code_editing_the_workspace(
    tmp_path: Path, small_corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    respond = _research(calls)
    respond.workspace = (tmp_path / "runs" / "ed1" / "workspace").resolve()  # type: ignore[attr-defined]
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary.txt").write_text("a secret the edited code must not see")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monkeypatch.setenv("AUTONAS_TEST_PORT", str(listener.getsockname()[1]))
    with ScriptedLLMServer(respond) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_url)  # the Claude Code CLI reads it from its environment
        monkeypatch.setenv("HOME", str(home))
        result = runner.invoke(
            app,
            [
                "run",
                "find the best Python code model under 1 MB",
                "--run-id",
                "ed1",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--budget",
                "30m",
                "--experiment-budget",
                "16ktok",
                "--corpus",
                str(small_corpus_dir),
                "--eval-bytes",
                "6000",
                "--base-url",
                srv.anthropic_url,
                "--max-experiments",
                "4",
                "--editor",
                "claude-code,builtin",
            ],
        )
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "ed1"
    ws = run / "workspace"
    rows = list(csv.DictReader(open(ws / "results.tsv"), delimiter="\t"))
    # e002: the loop's noise repeat of e001 runs on the kept change as it is (no edit, no LLM)
    assert [r["decision"] for r in rows][:3] == ["keep", "repeat", "crash"]
    assert rows[3]["decision"] in ("keep", "discard")
    assert "edit failed" in rows[2]["reason"] and "empty diff" in rows[2]["reason"]
    assert "WORKSPACE-CODE-MARKER" in (ws / "runs" / "e002" / "worker.log").read_text()
    # e001: the change is in the kept commit, and the worker ran the workspace's code
    repo = git.Repo(ws)
    e001 = next(c for c in repo.iter_commits("autonas/ed1") if "experiment: e001" in c.message)
    assert "editor: claude-code" in e001.message and "Code change (claude-code): print a marker" in e001.message
    assert set(e001.stats.files) >= {"nas/space.py", "configs/arch.json", "configs/plan.json"}
    assert (ws / "nas" / "space.py").read_text() == SPACE_WITH_MARKER
    carried = json.loads((ws / "runs" / "e001" / "code.json").read_text())  # the model carries the edited code
    assert (
        carried["commit"] == e001.hexsha
        and (ws / "runs" / "e001" / "code" / "nas" / "space.py").read_text() == SPACE_WITH_MARKER
    )
    # scored by the best model's own code, confined
    assert json.loads((run / "summary.json").read_text())["heldout_bpb"]
    worker_log = (ws / "runs" / "e001" / "worker.log").read_text()
    assert "WORKSPACE-CODE-MARKER" in worker_log
    assert "CONFINED-PROBE home=False wrote=False net=False" in worker_log  # the edited code ran confined
    assert not (ws / "escaped.txt").exists()
    listener.close()
    assert (ws / "runs" / "e001" / "edit" / "claude_transcript.jsonl").is_file()
    assert 'print("WORKSPACE-CODE-MARKER"' in (ws / "runs" / "e001" / "edit" / "edit.patch").read_text()
    # e003: both editors failed, nothing of the edit is left, the run went on
    assert not (ws / "runs" / "e003" / "metrics.json").exists()  # no worker ran
    assert "refs/autonas/discarded/e003" in [r.path for r in repo.refs]
    journal = (ws / "journal.md").read_text()
    assert "claude-code edit failed: empty diff" in journal and "builtin edit failed" in journal
    # the editor's spend is in the ledger next to the planner's
    ledger = [json.loads(line) for line in (run / "llm_calls.jsonl").read_text().splitlines()]
    editor_rows = [r for r in ledger if r["role"] == "editor"]
    assert [r["provider"] for r in editor_rows] == ["claude-code", "claude-code"]  # the built-in editor is no LLM call
    assert editor_rows[0]["ok"] and editor_rows[0]["cost_usd"] > 0 and not editor_rows[1]["ok"]
    # the seeded code is one commit of its own, not an experiment
    assert any(
        c.message.startswith("autonas run ed1: model code (nas/model.py, nas/space.py, nas/train.py)")
        for c in repo.iter_commits("autonas/ed1")
    )


def test_workspace_carries_the_code_workers_import_and_tolerates_an_edit_in_flight(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from agent.editing import worker_env
    from harness.model_code import seed_files
    from sandbox.workspace import Workspace, WorkspaceError

    ws = Workspace.create(tmp_path / "ws", "r")
    ws.seed_code(seed_files())
    assert (
        ws.has_code() and (ws.root / "nas" / "model.py").is_file() and not list((ws.root / "nas").rglob("__pycache__"))
    )
    assert ws.experiments() == []  # the code snapshot is set-up, not an experiment
    env = worker_env(True, ws.root, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    where = subprocess.run(
        [sys.executable, "-c", "import nas.model; print(nas.model.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == (ws.root / "nas" / "model.py").resolve()
    (ws.root / "nas" / "model.py").write_text("# an edit a kill interrupted\n")
    (ws.root / "runs").mkdir()
    (ws.root / "runs" / "keep.txt").write_text("ignored files survive\n")
    ws.ensure_clean_except_agent(("configs/", "nas/"))  # the agent's own edit in flight
    with pytest.raises(WorkspaceError, match="not the agent's"):
        ws.ensure_clean_except_agent(("configs/",))
    ws.reset_tree()
    assert not ws.has_changes() and (ws.root / "runs" / "keep.txt").is_file()
    with pytest.raises(WorkspaceError, match="already has nas/"):
        ws.seed_code(seed_files())


@pytest.mark.slow
def test_missing_editor_binary_fails_the_experiment_and_the_run_goes_on(
    tmp_path: Path, small_corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def respond(path: str, body: dict) -> Reply:
        names = [t["name"] for t in body.get("tools", [])]
        if names == ["submit_verdict"]:
            return anthropic_tool("submit_verdict", {"decision": "keep", "reason": "fine"})
        calls.append("plan")
        if len(calls) == 1:
            return anthropic_tool("submit_plan", train_plan(code_change="add QK-norm in nas/model.py", rationale="qk"))
        return anthropic_tool("submit_plan", train_plan(seed=len(calls), rationale="plain"))

    with ScriptedLLMServer(respond) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        result = runner.invoke(
            app,
            [
                "run",
                "find the best Python code model under 1 MB",
                "--run-id",
                "nb",
                "--runs-dir",
                str(tmp_path),
                "--budget",
                "30m",
                "--experiment-budget",
                "16ktok",
                "--corpus",
                str(small_corpus_dir),
                "--eval-bytes",
                "6000",
                "--base-url",
                srv.anthropic_url,
                "--max-experiments",
                "2",
                "--editor",
                "claude-code",
                "--claude-binary",
                str(tmp_path / "no-claude"),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "warning: editor claude-code: no Claude Code binary at" in result.output
    rows = list(csv.DictReader(open(tmp_path / "nb" / "workspace" / "results.tsv"), delimiter="\t"))
    assert rows[0]["decision"] == "crash" and "no Claude Code binary" in rows[0]["reason"]
    assert rows[1]["decision"] == "keep"  # the run went on
    assert not (tmp_path / "nb" / "workspace" / "runs" / "e001" / "worker.log").exists()
