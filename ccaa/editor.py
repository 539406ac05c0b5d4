"""One interface for everything that changes a run's git workspace: ``editor.edit(workspace, instruction)``.

Three editors implement it: the built-in one (writes the plan's configuration files, no LLM), Claude Code
run headless (``ccaa.claude_code``) and a GUI driver that types into a terminal on a display (``ccaa.gui``).
Whatever an editor claims, the result is decided here from the workspace itself:

- the change is the difference between a snapshot of the working tree taken before the edit and one taken
  after (git trees written through a private index, so untracked files count and the real index is not
  touched); an empty difference fails the edit;
- files outside the workspace are watched (a snapshot of the workspace's parent folder, or roots the caller
  names) and any path the editor itself reports writing outside counts too; a violation reverts the edit
  and fails it, as does a commit or branch switch the editor made on its own;
- a failed edit always leaves the tree exactly as it was before the edit.

:func:`edit_with_fallback` tries editors in the configured order until one succeeds.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import gitexe
from sandbox.workspace import run_git

EDITOR_NAMES = ("builtin", "claude-code", "gui")
MAX_WATCHED_FILES = 50_000


class EditorUnavailable(Exception):
    """This editor cannot run here (no ``claude`` binary, no display): one line, and the next editor is tried."""


@dataclass(frozen=True)
class EditInstruction:
    """What to change. ``files`` is a structured change (relative path -> exact content) that the built-in editor
    applies; ``text`` is a change in words for the LLM editors (a new attention variant, a new search dimension)."""

    text: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    system_prompt: str = ""
    log_dir: Path | None = None  # transcripts and screenshots go here (inside the workspace's ignored runs/)
    timeout_s: float = 600.0
    # the caller's rule over changed paths (relative to the workspace): the reason a path is off limits, or None.
    # The agent passes the fixed-harness rule, so an edit of the measuring code fails and is undone.
    off_limits: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class EditorReport:
    """What an editor says it did; never trusted for the change itself, which comes from the tree."""

    ok: bool
    error: str | None = None
    cost_usd: float = 0.0
    turns: int | None = None
    session_id: str | None = None
    transcript: Path | None = None
    claimed_outside_writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EditResult:
    editor: str
    ok: bool
    files_changed: tuple[str, ...]
    diff: str
    cost_usd: float = 0.0
    turns: int | None = None
    session_id: str | None = None
    transcript: Path | None = None
    error: str | None = None
    outside_writes: tuple[str, ...] = ()
    wall_s: float = 0.0

    def summary(self) -> str:
        if not self.ok:
            return f"{self.editor} edit failed: {self.error}"
        cost = f", ${self.cost_usd:.4f}" if self.cost_usd else ""
        turns = f", {self.turns} turns" if self.turns is not None else ""
        changed = ", ".join(self.files_changed[:5])
        return f"{self.editor} changed {len(self.files_changed)} file(s) ({changed}){turns}{cost}"


class Editor(ABC):
    """An editor applies an instruction; :meth:`edit` wraps it in the checks every editor gets."""

    name: str = "editor"

    def __init__(self, watch: Sequence[Path] | None = None):
        self.watch = tuple(Path(p) for p in watch) if watch is not None else None

    def check(self) -> None:  # noqa: B027 - an optional hook, not abstract: an editor that needs nothing keeps this
        """Raise :class:`EditorUnavailable` when this editor cannot run on this machine (the agent says so at start).

        The default accepts every machine; editors that need a binary or a display override it.
        """

    @abstractmethod
    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        """Make the change in ``workspace``; may raise :class:`EditorUnavailable`."""

    def edit(self, workspace: str | Path, instruction: EditInstruction) -> EditResult:
        workspace = Path(workspace).resolve()
        t0 = time.monotonic()
        roots = self.watch if self.watch is not None else (workspace.parent,)
        tree_before = snapshot_tree(workspace)
        outside_before = snapshot_outside(roots, workspace)
        git_state_before = gitexe.protected_state(workspace)
        records = [workspace / p for p in AGENT_RECORDS]  # git-ignored, so no tree diff would show a write there
        records_before = snapshot_outside(records, instruction.log_dir)
        try:
            report = self.apply(workspace, instruction)
        except EditorUnavailable as err:
            report = EditorReport(ok=False, error=str(err))
        except Exception as err:  # an editor bug must not end the run: the experiment fails, the run goes on
            report = EditorReport(ok=False, error=f"{type(err).__name__}: {err}")
        # Before any git runs on the tree again: .git as it was (a commit or branch switch of the editor's own is
        # undone with it: HEAD and refs are among its files; the changes stay in the tree and fail the edit below).
        git_changes = gitexe.restore_protected(workspace, git_state_before)
        outside = sorted(
            set(changed_outside(outside_before, snapshot_outside(roots, workspace)))
            | {p for p in report.claimed_outside_writes if not _inside(Path(p), workspace)}
        )
        into_records = changed_outside(records_before, snapshot_outside(records, instruction.log_dir))
        for path in into_records:  # what it added goes; what it changed cannot be put back, so the edit fails
            if path not in records_before and (Path(path).is_file() or Path(path).is_symlink()):
                Path(path).unlink()
        tree_after = snapshot_tree(workspace)
        files = tuple(_git(workspace, "diff", "--name-only", tree_before, tree_after).splitlines())
        diff = tree_diff(workspace, tree_before, tree_after)
        error = report.error if not report.ok else None
        if outside:
            error = f"wrote outside the workspace: {', '.join(outside[:5])}" + (
                f" (+{len(outside) - 5} more)" if len(outside) > 5 else ""
            )
        elif into_records:
            error = f"wrote into the agent's records (results, run folders): {', '.join(into_records[:3])}"
        elif git_changes:
            shown = ", ".join(git_changes[:3]) + (" ..." if len(git_changes) > 3 else "")
            error = (
                f"the editor changed git's own files ({shown}): "
                "git finds commands to run there, and a commit or branch switch is the agent's to make"
            )
        elif error is None and not files:
            error = "empty diff: the editor changed nothing in the workspace"
        elif error is None and instruction.off_limits is not None:
            refused = [reason for f in files if (reason := instruction.off_limits(f))]
            if refused:
                error = f"changed files that are off limits: {refused[0]}" + (
                    f" (+{len(refused) - 1} more)" if len(refused) > 1 else ""
                )
        if error is not None:
            restore_tree(workspace, tree_before, tree_after)
        return EditResult(
            editor=self.name,
            ok=error is None,
            files_changed=files if error is None else (),
            diff=diff if error is None else "",
            cost_usd=report.cost_usd,
            turns=report.turns,
            session_id=report.session_id,
            transcript=report.transcript,
            error=error,
            outside_writes=tuple(outside),
            wall_s=time.monotonic() - t0,
        )


class BuiltinEditor(Editor):
    """Writes the plan's configuration files exactly; no LLM. It cannot make a change described in words."""

    name = "builtin"

    def apply(self, workspace: Path, instruction: EditInstruction) -> EditorReport:
        if instruction.text.strip() and not instruction.files:
            return EditorReport(
                ok=False,
                error="the built-in editor applies configuration changes only, not a change described in words",
            )
        for rel, content in instruction.files.items():
            path = (workspace / rel).resolve()
            if not _inside(path, workspace):
                raise ValueError(f"config path {rel!r} is outside the workspace")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        return EditorReport(ok=True)


def edit_with_fallback(
    editors: Sequence[Editor], workspace: str | Path, instruction: EditInstruction
) -> list[EditResult]:
    """Try each editor in order until one succeeds; every attempt is returned (the last one decides)."""
    results: list[EditResult] = []
    for editor in editors:
        results.append(editor.edit(workspace, instruction))
        if results[-1].ok:
            break
    return results


# ------------------------------------------------------------------------------------------ tree snapshots

AGENT_RECORDS = ("runs", "results.tsv", "journal.md")  # the agent's own files in a workspace (ignored by git)


def _git(workspace: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    """git through :mod:`sandbox.gitexe` (no hooks, no fsmonitor, no keys) with ``env`` added."""
    return _git_bytes(workspace, *args, check=check, env=env).decode("utf-8", "surrogateescape").strip()


def _git_bytes(workspace: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> bytes:
    """git's output exactly as written: no newline translation, no stripping (a patch must stay appliable)."""
    return run_git(workspace, *args, env=env, check=check)


def tree_diff(workspace: Path, before: str, after: str) -> str:
    """The change between two tree snapshots as a patch ``git apply`` takes back, byte for byte: its trailing
    blank context lines and CR characters are kept (bytes that are not UTF-8 survive as surrogate escapes,
    see :func:`patch_bytes`)."""
    return _git_bytes(workspace, "diff", "--binary", before, after).decode("utf-8", "surrogateescape")


def patch_bytes(diff: str) -> bytes:
    """The bytes of a diff from :func:`tree_diff`, to store or apply."""
    return diff.encode("utf-8", "surrogateescape")


def snapshot_tree(workspace: Path) -> str:
    """The working tree as a git tree object (tracked and untracked files, minus ignored ones), written through a
    throw-away index so the workspace's own index and history are untouched."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(workspace, "add", "-A", env=env)
        return _git(workspace, "write-tree", env=env)


def restore_tree(workspace: Path, before: str, after: str) -> None:
    """Put the working tree back to ``before``: files the edit added are removed, changed or deleted ones rewritten."""
    status = _git(workspace, "diff", "--name-status", "--no-renames", before, after)
    for line in status.splitlines():
        kind, _, path = line.partition("\t")
        if kind == "A":
            (workspace / path).unlink(missing_ok=True)
        else:
            _git(workspace, "checkout", before, "--", path)
            _git(workspace, "reset", "-q", "--", path)  # leave the index as the agent had it


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def snapshot_outside(roots: Sequence[Path], workspace: Path | None) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under ``roots`` (folders or files) except under ``workspace``.

    Taken before and after an edit, to find writes outside the workspace.
    """
    seen: dict[str, tuple[int, int]] = {}
    for r in roots:
        if Path(r).is_file() or Path(r).is_symlink():
            st = os.lstat(r)
            seen[str(r)] = (st.st_mtime_ns, st.st_size)
    stack = [Path(r).resolve() for r in roots if Path(r).is_dir() and not Path(r).is_symlink()]
    skip = Path(workspace).resolve() if workspace is not None else None
    while stack and len(seen) < MAX_WATCHED_FILES:
        folder = stack.pop()
        if folder == skip:
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    st = entry.stat(follow_symlinks=False)
                    seen[entry.path] = (st.st_mtime_ns, st.st_size)
            except OSError:
                continue
    return seen


def changed_outside(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
