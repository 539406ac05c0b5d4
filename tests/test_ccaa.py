"""The editors: the built-in one, the real Claude Code CLI against a scripted Messages server on 127.0.0.1, and
the checks every editor gets (diff from the tree, writes outside the workspace, commits of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ccaa.claude_code import ClaudeCodeEditor, StreamSummary, editor_env
from ccaa.editor import BuiltinEditor, EditInstruction, Editor, EditorReport, edit_with_fallback, snapshot_tree
from tests.llm_server import Reply, ScriptedLLMServer


def _has_claude() -> bool:
    from ccaa.claude_code import find_claude_binary
    from ccaa.editor import EditorUnavailable

    try:
        return bool(find_claude_binary())
    except EditorUnavailable:
        return False


HAS_CLAUDE = _has_claude()
needs_claude = pytest.mark.skipif(not HAS_CLAUDE, reason="the claude CLI is not installed (.ci/run installs it)")


def make_workspace(root: Path) -> Path:
    ws = root / "run" / "workspace"
    (ws / "nas").mkdir(parents=True)
    (ws / "nas" / "model.py").write_text("def attention(q, k, v):\n    return softmax(q @ k.T) @ v\n")
    (ws / ".gitignore").write_text("runs/\n")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], cwd=ws, check=True)
    return ws


def git_status(ws: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True, check=True).stdout


class ToolTurns:
    """Answers Claude Code's requests from a script of assistant turns, chosen by how many tool results the
    conversation already holds; requests without tools (titles, summaries) get a short text."""

    def __init__(self, turns: list[list[dict[str, Any]]], delay_s: float = 0.0):
        self.turns, self.delay_s = turns, delay_s
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, path: str, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        if not body.get("tools"):
            return _message([{"type": "text", "text": "Edit"}], "end_turn")
        done = sum(
            1
            for m in body.get("messages", [])
            if m.get("role") == "user"
            and isinstance(m.get("content"), list)
            and any(isinstance(c, dict) and c.get("type") == "tool_result" for c in m["content"])
        )
        blocks = self.turns[done] if done < len(self.turns) else [{"type": "text", "text": "Done."}]
        return Reply(
            body=_message(blocks, "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn").body,
            delay_s=self.delay_s,
        )


def _message(blocks: list[dict[str, Any]], stop: str) -> Reply:
    return Reply(
        body={
            "id": f"msg_{time.monotonic_ns()}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 1200, "output_tokens": 80},
        }
    )


def tool(name: str, args: dict[str, Any], n: int) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{n:03d}", "name": name, "input": args}


def claude_editor(server: ScriptedLLMServer, home: Path, **kw: Any) -> ClaudeCodeEditor:
    home.mkdir(exist_ok=True)
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.anthropic_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "OPENAI_API_KEY": "sk-openai-must-not-leak",
        "AWS_SECRET_ACCESS_KEY": "nope",
    }
    return ClaudeCodeEditor(env=base, **kw)


# ------------------------------------------------------------------------------------------ built-in + checks


def test_builtin_editor_writes_configs_and_reports_the_diff(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    result = BuiltinEditor().edit(ws, EditInstruction(files={"configs/arch.json": '{"d_model": 64}\n'}))
    assert result.ok and result.files_changed == ("configs/arch.json",)
    assert '+{"d_model": 64}' in result.diff
    again = BuiltinEditor().edit(ws, EditInstruction(files={"configs/arch.json": '{"d_model": 64}\n'}))
    assert not again.ok and "empty diff" in again.error  # same content: nothing changed
    words = BuiltinEditor().edit(ws, EditInstruction(text="add rotary embeddings"))
    assert not words.ok and "configuration changes only" in words.error


class _Rogue(Editor):
    """A misbehaving editor, to check the guard without any LLM."""

    name = "rogue"

    def __init__(self, action: str, outside: Path | None = None):
        super().__init__()
        self.action, self.outside = action, outside

    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        (workspace / "nas" / "model.py").write_text("changed\n")
        (workspace / "new_file.py").write_text("x = 1\n")
        if self.action == "outside":
            assert self.outside is not None
            self.outside.write_text("escaped\n")
        elif self.action == "commit":
            subprocess.run(
                ["git", "-c", "user.email=r@r", "-c", "user.name=r", "commit", "-qam", "rogue"],
                cwd=workspace,
                check=True,
            )
        elif self.action == "crash":
            raise RuntimeError("editor bug")
        return EditorReport(ok=True)


def test_guard_reverts_writes_outside_the_workspace(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    (ws / "configs").mkdir()
    (ws / "configs" / "plan.json").write_text(
        "{}\n"
    )  # the built-in editor's uncommitted change survives a reverted edit
    before = snapshot_tree(ws)
    result = _Rogue("outside", outside=tmp_path / "run" / "stolen.txt").edit(ws, EditInstruction(text="x"))
    assert (
        not result.ok
        and "outside the workspace" in result.error
        and result.outside_writes == (str(tmp_path / "run" / "stolen.txt"),)
    )
    assert snapshot_tree(ws) == before and (ws / "nas" / "model.py").read_text().startswith("def attention")
    assert not (ws / "new_file.py").exists() and (ws / "configs" / "plan.json").exists()


def test_guard_undoes_an_editors_own_commit_and_judges_the_change(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    result = _Rogue("commit").edit(ws, EditInstruction(text="x"))
    assert not result.ok and "commit or branch switch is the agent's to make" in result.error
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip() == head
    assert git_status(ws) == ""  # reverted: the tree is as it was


def test_editor_crash_fails_the_edit_and_the_fallback_takes_over(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    results = edit_with_fallback(
        [_Rogue("crash"), BuiltinEditor()], ws, EditInstruction(text="", files={"configs/a.json": "{}\n"})
    )
    assert [r.editor for r in results] == ["rogue", "builtin"]
    assert not results[0].ok and "editor bug" in results[0].error
    assert results[1].ok and results[1].files_changed == ("configs/a.json",)


def test_missing_claude_binary_is_one_line_and_falls_back(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    cc = ClaudeCodeEditor(binary=str(tmp_path / "no" / "claude"))
    results = edit_with_fallback(
        [cc, BuiltinEditor()], ws, EditInstruction(text="tune", files={"configs/a.json": "{}\n"})
    )
    assert not results[0].ok and "no Claude Code binary" in results[0].error and "\n" not in results[0].error
    assert results[-1].ok


def test_editor_env_passes_only_anthropic_settings() -> None:
    env = editor_env(
        {
            "PATH": "/bin",
            "HOME": "/h",
            "ANTHROPIC_API_KEY": "a",
            "ANTHROPIC_BASE_URL": "http://x",
            "OPENAI_API_KEY": "o",
            "AWS_SECRET_ACCESS_KEY": "s",
            "HF_TOKEN": "h",
            "GITHUB_TOKEN": "g",
        }
    )
    assert env["ANTHROPIC_API_KEY"] == "a" and env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert not {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "GITHUB_TOKEN"} & env.keys()


def test_stream_summary_counts_only_writes_that_happened() -> None:
    s = StreamSummary()
    events = [
        {"type": "system", "subtype": "init", "session_id": "s1"},
        {"type": "assistant", "message": {"content": [tool("Write", {"file_path": "/etc/x"}, 1)]}},
        {
            "type": "user",
            "message": {"content": [{"type": "tool_result", "tool_use_id": "toolu_001", "is_error": True}]},
        },
        {"type": "assistant", "message": {"content": [tool("Edit", {"file_path": "/ws/a.py"}, 2)]}},
        {
            "type": "user",
            "message": {"content": [{"type": "tool_result", "tool_use_id": "toolu_002", "content": "ok"}]},
        },
        {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3},
    ]
    for e in events:
        s.feed(json.dumps(e))
    s.feed("not json")
    assert (
        s.session_id == "s1"
        and s.writes == ["/ws/a.py"]
        and s.refused == 1
        and s.bad_lines == 1
        and s.result["num_turns"] == 3
    )


# ------------------------------------------------------------------------------------------ the real CLI


@needs_claude
def test_claude_code_really_edits_the_workspace(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    model = str(ws / "nas" / "model.py")
    script = ToolTurns(
        [
            [tool("Read", {"file_path": model}, 1)],
            [
                tool(
                    "Edit",
                    {"file_path": model, "old_string": "softmax(q @ k.T)", "new_string": "softmax(q @ k.T / d ** 0.5)"},
                    2,
                )
            ],
        ]
    )
    with ScriptedLLMServer(script) as server:
        editor = claude_editor(server, tmp_path / "home", max_turns=6)
        result = editor.edit(
            ws,
            EditInstruction(
                text="scale the attention scores",
                system_prompt="RULES-FROM-PROMPTS-DIR",
                log_dir=ws / "runs" / "e001" / "edit",
                timeout_s=120,
            ),
        )
    assert result.ok, result.error
    assert result.files_changed == ("nas/model.py",)
    assert "+    return softmax(q @ k.T / d ** 0.5) @ v" in result.diff
    assert result.turns == 3 and result.cost_usd > 0 and result.session_id
    assert result.transcript is not None and result.transcript.is_file()
    kinds = [json.loads(line)["type"] for line in result.transcript.read_text().splitlines()]
    assert kinds[0] == "system" and kinds[-1] == "result"
    main = [b for b in script.bodies if b.get("tools")]
    assert {t["name"] for t in main[0]["tools"]} <= {
        "Read",
        "Edit",
        "Write",
        "Glob",
        "Grep",
        "NotebookEdit",
    }  # no Bash, no web
    assert "RULES-FROM-PROMPTS-DIR" in json.dumps(main[0]["system"])
    assert git_status(ws).strip() == "M nas/model.py"  # changed in the tree, not committed: the agent commits


@needs_claude
def test_claude_code_sees_no_other_providers_keys_and_outside_writes_are_reverted(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    outside = tmp_path / "run" / "outside.txt"
    script = ToolTurns(
        [
            [tool("Bash", {"command": "env > env_dump.txt", "description": "dump env"}, 1)],
            [
                tool(
                    "Bash",
                    {
                        "command": f"cp env_dump.txt {tmp_path}/env_copy.txt; echo x > {outside}",
                        "description": "escape",
                    },
                    2,
                )
            ],
        ]
    )
    with ScriptedLLMServer(script) as server:
        editor = claude_editor(server, tmp_path / "home", tools=("Read", "Bash"), allowed_tools=("Bash",), max_turns=6)
        result = editor.edit(
            ws, EditInstruction(text="look around", log_dir=ws / "runs" / "e002" / "edit", timeout_s=120)
        )
    seen = (tmp_path / "env_copy.txt").read_text()
    assert (
        "ANTHROPIC_API_KEY=sk-ant-test" in seen and "sk-openai-must-not-leak" not in seen and "AWS_SECRET" not in seen
    )
    assert not result.ok and "outside the workspace" in result.error and str(outside) in result.outside_writes
    assert not (ws / "env_dump.txt").exists() and git_status(ws) == ""  # the workspace edit was reverted


@needs_claude
def test_claude_code_refused_outside_write_leaves_an_empty_diff(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    target = tmp_path / "run" / "sneaky.py"
    script = ToolTurns([[tool("Write", {"file_path": str(target), "content": "x = 1\n"}, 1)]])
    with ScriptedLLMServer(script) as server:
        result = claude_editor(server, tmp_path / "home", max_turns=4).edit(
            ws, EditInstruction(text="write outside", log_dir=ws / "runs" / "e003" / "edit", timeout_s=120)
        )
    assert not target.exists()  # acceptEdits refuses writes outside the working directory in headless mode
    assert not result.ok and "empty diff" in result.error


@needs_claude
def test_claude_code_that_hangs_is_killed_with_its_group(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    script = ToolTurns([[tool("Read", {"file_path": str(ws / "nas" / "model.py")}, 1)]], delay_s=60)
    with ScriptedLLMServer(script) as server:
        t0 = time.monotonic()
        result = claude_editor(server, tmp_path / "home").edit(
            ws, EditInstruction(text="x", log_dir=ws / "runs" / "e4", timeout_s=4)
        )
        wall = time.monotonic() - t0
    assert not result.ok and "did not finish within 4s" in result.error
    assert wall < 40
    left = subprocess.run(["pgrep", "-f", "claude -p x --output-format"], capture_output=True, text=True).stdout.split()
    assert left == []


# ------------------------------------------------------------------------------------------ the GUI fallback

HAS_GUI = all(shutil.which(b) for b in ("Xvfb", "xterm", "tesseract"))
needs_gui = pytest.mark.skipif(
    not HAS_GUI, reason="Xvfb, xterm and tesseract are not installed (.ci/run installs them)"
)


@needs_gui
def test_gui_editor_types_into_a_real_terminal_and_the_diff_shows_it(tmp_path: Path) -> None:
    from ccaa.gui import GuiEditor, TesseractReader, is_blank

    ws = make_workspace(tmp_path)
    editor = GuiEditor(
        command=["bash", "--norc", "--noprofile"],
        rules=(),
        ready_pattern=r"bash-[\d.]+[#$]",
        busy_pattern="",
        poll_s=0.5,
        stable_s=1.5,
        timeout_s=60,
    )
    log_dir = ws / "runs" / "e010" / "edit"
    result = editor.edit(ws, EditInstruction(text="echo gui-edit-ok > gui.txt", log_dir=log_dir))
    assert result.ok, result.error
    assert result.files_changed == ("gui.txt",) and (ws / "gui.txt").read_text() == "gui-edit-ok\n"
    shots = sorted((log_dir / "screens").glob("*.png"))
    assert shots and not any(is_blank(p) for p in shots)
    assert "echo gui-edit-ok" in TesseractReader().read(shots[-1])  # the typed text is on the screen
    steps = [json.loads(line) for line in (log_dir / "gui_transcript.jsonl").read_text().splitlines()]
    assert [s["action"] for s in steps if s["action"]][0] == "typed instruction"
    assert steps[-1]["action"].startswith("done")


@needs_gui
@needs_claude
@pytest.mark.slow
def test_gui_editor_drives_interactive_claude_code_through_its_prompts(tmp_path: Path) -> None:
    """The real interactive Claude Code in xterm: the driver answers the trust and API-key prompts by rule, types
    the instruction, and the CLI's Write (scripted by the local Messages server) lands in the workspace."""
    from ccaa.gui import GuiEditor

    ws = make_workspace(tmp_path)
    script = ToolTurns([[tool("Write", {"file_path": str(ws / "nas" / "rope.py"), "content": "ROTARY = True\n"}, 1)]])
    with ScriptedLLMServer(script) as server:
        env = {
            "PATH": os.environ["PATH"],
            "ANTHROPIC_BASE_URL": server.anthropic_url,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "OPENAI_API_KEY": "sk-openai-must-not-leak",
        }
        editor = GuiEditor(env=env, poll_s=1.0, stable_s=2.0, timeout_s=120)
        log_dir = ws / "runs" / "e011" / "edit"
        result = editor.edit(
            ws,
            EditInstruction(
                text="add a rotary embedding flag in nas/rope.py", system_prompt="GUI-RULES", log_dir=log_dir
            ),
        )
    assert result.ok, result.error
    assert result.files_changed == ("nas/rope.py",) and (ws / "nas" / "rope.py").read_text() == "ROTARY = True\n"
    actions = [json.loads(line)["action"] for line in (log_dir / "gui_transcript.jsonl").read_text().splitlines()]
    fired = [a for a in actions if a]
    assert any(a.startswith("rule: trust the workspace") for a in fired)
    assert any(a.startswith("rule: use the configured API key") for a in fired)
    assert "typed instruction" in fired
    main = [b for b in script.bodies if b.get("tools")]
    assert "add a rotary embedding flag" in json.dumps(main[0]["messages"]) and "GUI-RULES" in json.dumps(
        main[0]["system"]
    )
    assert {t["name"] for t in main[0]["tools"]} <= {"Read", "Edit", "Write", "Glob", "Grep", "NotebookEdit"}


def test_vision_model_reader_sends_the_screenshot_to_an_openai_compatible_server(tmp_path: Path) -> None:
    from PIL import Image

    from ccaa.gui import VisionModelReader
    from tests.llm_server import openai_text

    png = tmp_path / "screen.png"
    Image.new("RGB", (64, 32), "white").save(png)
    with ScriptedLLMServer() as server:
        server.script.append(openai_text("bash-5.2# echo hi"))
        text = VisionModelReader("opencua-7b", server.openai_url).read(png)
    assert text == "bash-5.2# echo hi"
    content = server.requests[0]["json"]["messages"][0]["content"]
    assert server.requests[0]["json"]["model"] == "opencua-7b"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_gui_editor_without_terminal_or_display_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ccaa.gui as gui

    ws = make_workspace(tmp_path)
    monkeypatch.setattr(gui.shutil, "which", lambda name: None)  # neither xterm nor Xvfb on this machine
    result = gui.GuiEditor(command=["bash"], reader=_NoReader()).edit(ws, EditInstruction(text="x"))
    assert not result.ok and result.error == "no terminal to drive: apt-get install xterm"
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(gui, "_DISPLAY", {})
    with pytest.raises(gui.EditorUnavailable, match="no display: set DISPLAY or install Xvfb"):
        gui.ensure_display()


class _NoReader:
    def read(self, png: Path) -> str:
        return ""
