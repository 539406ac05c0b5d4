"""Claude Code as a headless editor: ``claude -p`` with streamed JSON events, a turn limit, a permission mode and
a tool list that keep it to file edits in the workspace, our rules appended to its system prompt.

Learned from running the CLI (2.1.x) against a local Messages server: it always streams (``POST
/v1/messages?beta=true``); exit code 0 alone is not success, the final ``result`` event says (``subtype``,
``is_error``, ``num_turns``, ``total_cost_usd``); as root ``bypassPermissions`` refuses to start, while
``acceptEdits`` auto-approves edits inside the working directory and refuses writes elsewhere; ``--tools``
restricts the tool list and ``--allowedTools`` only auto-approves. The process runs in its own session with
stdin from /dev/null, and on timeout its whole process group is killed (children otherwise outlive it).

The CLI sees only the environment it needs (``sandbox.environment.CLAUDE_CODE_EDITOR``): PATH, HOME, locale, the
machine's proxy and CA bundle, and Anthropic's own settings and key. Keys of other providers, and every other
variable of the agent, never reach it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ccaa.editor import EditInstruction, Editor, EditorReport, EditorUnavailable
from sandbox.environment import CLAUDE_CODE_EDITOR, Family, child_env
from sandbox.processes import kill_group, signal_group

# Tools that only read or edit files: no shell, no web, no sub-agents unless the user widens the list.
EDIT_TOOLS = ("Read", "Edit", "Write", "Glob", "Grep", "NotebookEdit")
WRITING_TOOLS = {"Edit", "Write", "MultiEdit", "NotebookEdit"}
INSTALL_HINT = (
    "install it with `npm install -g @anthropic-ai/claude-code` or `pip install claude-agent-sdk`,"
    " or give --claude-binary"
)


def find_claude_binary(explicit: str | None = None) -> str:
    """An explicit path, else ``claude`` on PATH, else the binary bundled in the ``claude-agent-sdk`` wheel."""
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise EditorUnavailable(f"no Claude Code binary at {explicit}: {INSTALL_HINT}")
        return found
    found = shutil.which("claude")
    if found:
        return found
    try:
        import claude_agent_sdk  # optional: only its bundled binary is wanted, and only when no claude is on PATH

        bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    raise EditorUnavailable(f"no `claude` binary on PATH: {INSTALL_HINT}")


def editor_env(
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    profile: tuple[Family, ...] = CLAUDE_CODE_EDITOR,
) -> dict[str, str]:
    """The allow-listed environment of a Claude Code process (``base``: default this process's), plus ``extra``."""
    env = child_env(profile, base=base)
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")  # no telemetry or update checks from a worker
    env.update(extra or {})
    return env


def confinement_flags(
    permission_mode: str = "acceptEdits",
    tools: Sequence[str] = EDIT_TOOLS,
    allowed_tools: Sequence[str] = (),
    system_prompt: str = "",
    model: str | None = None,
) -> list[str]:
    """The flags that keep Claude Code (headless or interactive) to file edits in its working directory, with our
    rules appended to its system prompt."""
    flags = ["--permission-mode", permission_mode, "--tools", ",".join(tools)]
    if allowed_tools:
        flags += ["--allowedTools", ",".join(allowed_tools)]
    if system_prompt:
        flags += ["--append-system-prompt", system_prompt]
    if model:
        flags += ["--model", model]
    return flags


@dataclass
class StreamSummary:
    """What the event stream said; filled line by line as events arrive."""

    session_id: str | None = None
    result: dict[str, Any] | None = None
    writes: list[str] = field(default_factory=list)  # files a writing tool reported writing (its result was no error)
    refused: int = 0
    _pending: dict[str, str] = field(default_factory=dict)
    bad_lines: int = 0

    def feed(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            self.bad_lines += 1
            return
        if not isinstance(event, dict):
            self.bad_lines += 1
            return
        self.session_id = event.get("session_id") or self.session_id
        kind = event.get("type")
        content = (event.get("message") or {}).get("content") if isinstance(event.get("message"), dict) else None
        if kind == "assistant":
            for block in content or []:
                if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") in WRITING_TOOLS:
                    path = (block.get("input") or {}).get("file_path") or (block.get("input") or {}).get(
                        "notebook_path"
                    )
                    if path:
                        self._pending[str(block.get("id"))] = str(path)
        elif kind == "user":
            for block in content or []:
                if not (isinstance(block, dict) and block.get("type") == "tool_result"):
                    continue
                path = self._pending.pop(str(block.get("tool_use_id")), None)
                if block.get("is_error"):
                    self.refused += 1
                elif path:
                    self.writes.append(path)
        elif kind == "result":
            self.result = event


class ClaudeCodeEditor(Editor):
    """Runs the ``claude`` CLI headless in the workspace; see the module docstring for why each flag is there."""

    name = "claude-code"

    def __init__(
        self,
        binary: str | None = None,
        model: str | None = None,
        max_turns: int = 30,
        permission_mode: str = "acceptEdits",
        tools: Sequence[str] = EDIT_TOOLS,
        allowed_tools: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        watch: Sequence[Path] | None = None,
    ):
        super().__init__(watch)
        self.binary, self.model, self.max_turns = binary, model, max_turns
        self.permission_mode, self.tools, self.allowed_tools = permission_mode, tuple(tools), tuple(allowed_tools)
        self.base_env, self.extra_env, self.timeout_s = env, dict(extra_env or {}), timeout_s

    def command(self, binary: str, instruction: EditInstruction) -> list[str]:
        return [
            binary,
            "-p",
            instruction.text,
            "--output-format",
            "stream-json",
            "--verbose",
            "--max-turns",
            str(self.max_turns),
            *confinement_flags(
                self.permission_mode, self.tools, self.allowed_tools, instruction.system_prompt, self.model
            ),
        ]

    def check(self) -> None:
        find_claude_binary(self.binary)

    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        if not instruction.text.strip():
            return EditorReport(
                ok=False, error="Claude Code needs a change described in words; this instruction has none"
            )
        binary = find_claude_binary(self.binary)
        log_dir = Path(instruction.log_dir or workspace / "runs" / "edits")
        log_dir.mkdir(parents=True, exist_ok=True)
        transcript, stderr_path = log_dir / "claude_transcript.jsonl", log_dir / "claude_stderr.log"
        timeout = self.timeout_s or instruction.timeout_s
        summary = StreamSummary()
        with open(transcript, "w") as out, open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    self.command(binary, instruction),
                    cwd=workspace,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=editor_env(self.base_env, self.extra_env),
                    start_new_session=True,
                    text=True,
                    bufsize=1,
                )
            except OSError as e:
                raise EditorUnavailable(f"cannot start {binary}: {e.strerror or e}") from None

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    summary.feed(line)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc, grace_s=3.0)
            finally:
                signal_group(proc.pid)
            reader.join(timeout=5.0)
        return self._report(summary, proc.returncode, timed_out, timeout, transcript, stderr_path)

    @staticmethod
    def _report(
        s: StreamSummary, returncode: int | None, timed_out: bool, timeout: float, transcript: Path, stderr_path: Path
    ) -> EditorReport:
        result = s.result or {}
        cost = float(result.get("total_cost_usd") or 0.0)
        turns = result.get("num_turns")
        # the figures every outcome reports; a failure replaces ok and error
        success = EditorReport(
            ok=True,
            cost_usd=cost,
            turns=turns,
            session_id=s.session_id,
            transcript=transcript,
            claimed_outside_writes=tuple(s.writes),
        )
        if timed_out:
            return replace(
                success, ok=False, error=f"Claude Code did not finish within {timeout:g}s (process group killed)"
            )
        if s.result is None:
            tail = stderr_path.read_text(errors="replace").strip().splitlines()[-1:] if stderr_path.exists() else []
            why = tail[0][:200] if tail else f"exit code {returncode}"
            return replace(success, ok=False, error=f"Claude Code ended without a result event ({why})")
        if result.get("is_error") or result.get("subtype") != "success":
            detail = result.get("result") or result.get("subtype") or "error"
            return replace(
                success, ok=False, error=f"Claude Code reported {result.get('subtype')}: {str(detail)[:200]}"
            )
        return success
