"""The agent's side of editing: which editors a run uses, what they are told, and replaying a change.

The plan's configuration always goes in through the built-in editor (exact files, no LLM). A plan's
``code_change`` goes to the configured chain (``--editor claude-code,gui``): the first that succeeds wins, a
failure is one line in the run log and the experiment fails, the run goes on. A re-run of a plan whose code
change already succeeded (a close call re-measured with another seed) applies that exact diff again (stored byte
for byte, applied by absolute path) instead of asking an LLM for a new one, so both runs measure the same code; a
repeat of a kept experiment, whose commit already holds the change, runs with no edit at all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from agent.edits import EditAttempt, EditSummary
from agent.plans import AnyPlan
from agent.prompting import Prompts
from agent.settings import RunSettings
from agent.state import HistoryEntry
from ccaa.claude_code import ClaudeCodeEditor
from ccaa.editor import (
    EDITOR_NAMES,
    BuiltinEditor,
    EditInstruction,
    Editor,
    EditorReport,
    EditorUnavailable,
    EditResult,
    edit_with_fallback,
    patch_bytes,
)
from ccaa.gui import GuiEditor
from harness.errors import UserError
from harness.model_code import MODEL_CODE_ENV, off_limits_reason
from sandbox import gitexe

PATCH_NAME = "edit.patch"
IN_TREE = "in-tree"  # the editor name of a repeat whose code change the tree already holds (no edit made)


def parse_editors(spec: str) -> tuple[str, ...]:
    """``builtin``, ``claude-code``, ``gui`` or a comma-separated fallback chain of them."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    bad = [n for n in names if n not in EDITOR_NAMES]
    if not names or bad:
        raise UserError(
            f"--editor {spec!r}: use {', '.join(EDITOR_NAMES)} or a comma-separated chain (e.g. claude-code,gui)"
        )
    if len(set(names)) != len(names):
        raise UserError(f"--editor {spec!r} names an editor twice")
    return names


def editor_warnings(settings: RunSettings) -> list[str]:
    """Editors that cannot run on this machine, said once at the start (their edits would fail one by one)."""
    out = []
    for editor in build_editors(settings):
        try:
            editor.check()
        except EditorUnavailable as err:
            out.append(f"editor {editor.name}: {err}")
    return out


def build_editors(settings: RunSettings, env: Mapping[str, str] | None = None) -> list[Editor]:
    """The code-change chain, in the configured order."""
    editors: list[Editor] = []
    for name in settings.editors:
        if name == "builtin":
            editors.append(BuiltinEditor())
        elif name == "claude-code":
            editors.append(
                ClaudeCodeEditor(
                    binary=settings.claude_binary,
                    model=settings.claude_model,
                    max_turns=settings.editor_max_turns,
                    env=env,
                )
            )
        else:
            editors.append(GuiEditor(env=env))
    return editors


def code_instruction(
    prompts: Prompts, plan: AnyPlan, exp_id: str, title: str, workspace: Path, log_dir: Path, timeout_s: float
) -> EditInstruction:
    text = prompts.render(
        "editor",
        workspace=workspace,
        experiment=exp_id,
        title=title,
        rationale=plan.rationale,
        instructions=plan.code_change,
    )
    return EditInstruction(
        text=text,
        system_prompt=prompts.render("editor_system", workspace=workspace),
        log_dir=log_dir,
        timeout_s=timeout_s,
        off_limits=off_limits_reason,
    )


def replay_patch(history: list[HistoryEntry], code_change: str) -> Path | None:
    """The stored diff of an earlier experiment whose editor made this same code change (an absolute path)."""
    for h in reversed(history):
        edit = h.edit
        if h.plan.code_change == code_change and edit and edit.ok and edit.patch and Path(edit.patch).is_file():
            return Path(edit.patch).resolve()
    return None


def _git_apply(workspace: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """``git apply`` of a stored patch, by absolute path (the workspace is git's working folder, not ours)."""
    return subprocess.run(
        [gitexe.executable(), "apply", "--whitespace=nowarn", *flags, str(patch.resolve())],
        cwd=workspace,
        capture_output=True,
        env=gitexe.safe_env(),
    )


def change_in_tree(workspace: Path, patch: Path) -> bool:
    """True when the tree already holds the change (its reverse applies): a repeat of a kept experiment, whose commit
    carries the change, runs on it as it is."""
    return _git_apply(workspace, patch, "--reverse", "--check").returncode == 0


class PatchReplay(Editor):
    """Applies a stored diff with ``git apply``: the same code change, without an LLM."""

    name = "replay"

    def __init__(self, patch: Path):
        super().__init__()
        self.patch = patch.resolve()

    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        proc = _git_apply(workspace, self.patch)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()[:200]
            return EditorReport(ok=False, error=f"the stored change {self.patch} no longer applies: {err}")
        return EditorReport(ok=True)


def apply_code_change(
    settings: RunSettings,
    prompts: Prompts,
    plan: AnyPlan,
    exp_id: str,
    title: str,
    workspace: Path,
    log_dir: Path,
    history: list[HistoryEntry],
    env: Mapping[str, str] | None = None,
) -> list[EditResult]:
    """Run the replay or the editor chain; the winning diff is stored byte for byte as ``edit.patch`` in the
    experiment's folder. A change the tree already holds (a repeat of the kept experiment that made it) needs no
    edit: its patch is stored again and the experiment runs on the tree as it is."""
    log_dir.mkdir(parents=True, exist_ok=True)
    assert plan.code_change is not None
    stored = replay_patch(history, plan.code_change)
    if stored is not None and change_in_tree(workspace, stored):
        diff = stored.read_bytes()
        (log_dir / PATCH_NAME).write_bytes(diff)
        return [EditResult(editor=IN_TREE, ok=True, files_changed=(), diff=diff.decode("utf-8", "surrogateescape"))]
    instruction = code_instruction(prompts, plan, exp_id, title, workspace, log_dir, settings.editor_timeout_s)
    chain: list[Editor] = [PatchReplay(stored)] if stored else build_editors(settings, env)
    results = edit_with_fallback(chain, workspace, instruction)
    if results[-1].ok:
        (log_dir / PATCH_NAME).write_bytes(patch_bytes(results[-1].diff))
    return results


def edit_summary(results: list[EditResult], log_dir: Path) -> EditSummary:
    """The checkpointed record of the attempts (the last one decides)."""
    last = results[-1]
    error = None if last.ok else "; ".join(f"{r.editor}: {r.error}" for r in results)
    return EditSummary(
        ok=last.ok,
        editor=last.editor,
        files=list(last.files_changed),
        error=error,
        cost_usd=sum(r.cost_usd for r in results),
        turns=last.turns,
        session_id=last.session_id,
        patch=str((log_dir / PATCH_NAME).resolve()) if last.ok else None,
        attempts=[
            EditAttempt(
                editor=r.editor,
                ok=r.ok,
                error=r.error,
                wall_s=round(r.wall_s, 2),
                transcript=str(r.transcript) if r.transcript else None,
            )
            for r in results
        ],
    )


def worker_env(workspace_has_code: bool, workspace: Path, base: Mapping[str, str]) -> dict[str, str]:
    """Workers run the workspace's model code when the run carries one (``AUTONAS_MODEL_CODE``); the harness and
    the rest of ``nas`` always come from the installed package."""
    env = dict(base)
    env.pop(MODEL_CODE_ENV, None)
    env["PYTHONSAFEPATH"] = (
        "1"  # the working folder (the workspace) is never on the import path: a planted harness/ stays out
    )
    if workspace_has_code:
        env[MODEL_CODE_ENV] = str(workspace.resolve())
    return env
