"""git for the agent's workspaces, where an editor (an LLM with write access) may have planted code.

Git runs code named by its repository: hooks (``.git/hooks/post-commit``), ``core.fsmonitor``, clean/smudge
filters, ``diff.external``, pagers. Every git the agent starts in a workspace therefore goes through
:func:`executable`, a wrapper that

- gets an environment built from the tool allow-list (:data:`sandbox.environment.TOOL`, no keys), plus
  the ``GIT_*`` variables that select an index, a directory or an identity;
- passes ``-c core.hooksPath=/dev/null -c core.fsmonitor=false``, so hooks and fsmonitor never run.

Config-borne commands (filters, ``diff.external``) are refused at the source instead: git reads no system
or global config, and an edit that changes anything under ``.git`` but object data (config, hooks, info,
``commondir``, refs), replaces ``.git`` itself, or adds a nested repository fails and is restored
(:func:`protected_state`, :func:`restore_protected`). GitPython is pointed at the wrapper once
(:func:`use_for_gitpython`). The strongest form, git itself under bubblewrap as an unprivileged user, is
not done yet.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.environment import TOOL, child_env
from sandbox.safe_files import remove

SAFE_CONFIG = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "diff.ignoreSubmodules=all",
    "-c",
    "submodule.recurse=false",
    "-c",
    "protocol.allow=never",
)
PASSED_GIT_VARS = (
    "GIT_INDEX_FILE",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
    "GIT_TERMINAL_PROMPT",
)


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a workspace git gets: tool basics, never a key, no system or global config (where a
    filter could be defined for a ``.gitattributes`` an editor writes), the agent as committer."""
    return child_env(
        TOOL,
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_COMMITTER_NAME": "AutoNAS agent",
            "GIT_COMMITTER_EMAIL": "agent@autonas.local",
            **(extra or {}),
        },
    )


_WRAPPER = """#!{python} -IS
import os, sys
from sandbox.gitexe import PASSED_GIT_VARS, SAFE_CONFIG, safe_env
env = safe_env({{k: v for k, v in os.environ.items() if k in PASSED_GIT_VARS}})
os.execvpe("git", ["git", *SAFE_CONFIG, *sys.argv[1:]], env)
"""


@functools.lru_cache(maxsize=1)
def executable() -> str:
    """The path of the wrapper (written once per process into a private temporary folder)."""
    folder = Path(tempfile.mkdtemp(prefix="autonas-git-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "git"
    project = Path(__file__).resolve().parents[1]
    body = _WRAPPER.format(python=sys.executable).replace(
        "import os, sys\n", f"import os, sys\nsys.path.insert(0, {str(project)!r})\n", 1
    )
    path.write_text(body)
    path.chmod(stat.S_IRWXU)
    return str(path)


def use_for_gitpython() -> None:
    """Every GitPython call in this process goes through the wrapper."""
    # Not at the top: the wrapper imports this module with every git command, and GitPython is slow to import.
    import git

    if getattr(git.Git, "GIT_PYTHON_GIT_EXECUTABLE", None) != executable():
        git.refresh(executable())


def _object_data(rel: Path) -> bool:
    """Loose objects, packs and the index: data git never runs (``objects/info`` is not among them). The index
    is left out because a tool that only runs ``git status`` refreshes it; it names no command."""
    parts = rel.parts
    return (len(parts) >= 2 and parts[0] == "objects" and parts[1] != "info") or rel == Path("index")


def protected_state(workspace: Path) -> GitState:
    """Everything under ``.git`` but object data: config, hooks, info, ``commondir``, refs, HEAD, modules/...

    Git finds commands to run in several of them (config and any config it points to, hooks, attributes);
    an editor has no business in any of them.
    """
    gitdir = Path(workspace) / ".git"
    st = os.lstat(gitdir)
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(gitdir):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root) / name
            rel = p.relative_to(gitdir)
            if _object_data(rel):
                continue
            try:
                files[str(rel)] = b"link:" + os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
            except OSError:
                files[str(rel)] = b"<unreadable>"
    return GitState(st.st_dev, st.st_ino, files)


@dataclass(frozen=True)
class GitState:
    """What :func:`protected_state` saw: which directory ``.git`` was, and its files' bytes."""

    dev: int
    ino: int
    files: dict[str, bytes]


class GitTampered(RuntimeError):
    """The workspace's ``.git`` was replaced in a way that cannot be undone; the run must stop."""


def _put_back_gitdir(workspace: Path, before: GitState) -> bool:
    """If ``.git`` is no longer the directory it was (a gitfile, a link, a renamed copy), put that directory back."""
    gitdir = workspace / ".git"
    try:
        st = os.lstat(gitdir)
        if (st.st_dev, st.st_ino) == (before.dev, before.ino):
            return False
    except FileNotFoundError:
        pass
    original = next(
        (
            p
            for p in workspace.iterdir()
            if not p.is_symlink()
            and p.is_dir()
            and (os.lstat(p).st_dev, os.lstat(p).st_ino) == (before.dev, before.ino)
        ),
        None,
    )
    if original is None:
        raise GitTampered(
            f"the workspace's .git directory is gone from {workspace}; stopping before git runs there again"
        )
    remove(gitdir)
    original.rename(gitdir)
    return True


def nested_git_dirs(workspace: Path, skip: tuple[str, ...] = ("runs",)) -> list[Path]:
    """``.git`` entries below the top (a nested repository carries a config git would read and obey)."""
    found = []
    for root, dirs, names in os.walk(workspace):
        rel = Path(root).relative_to(workspace)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d != ".git" and d not in skip]
        found += [Path(root) / n for n in dirs + names if n == ".git" and rel != Path(".")]
        dirs[:] = [d for d in dirs if d != ".git"]
    return found


def restore_protected(workspace: Path, before: GitState) -> list[str]:
    """Put ``.git`` back as ``before`` (its identity, then every file but object data) and remove nested
    repositories; returns what had changed (empty when the editor left git alone)."""
    workspace = Path(workspace)
    changed = [".git (replaced)"] if _put_back_gitdir(workspace, before) else []
    for nested in nested_git_dirs(workspace):
        changed.append(str(nested.relative_to(workspace)))
        remove(nested)
    gitdir = workspace / ".git"
    now = protected_state(workspace).files
    for rel in sorted(k for k in set(before.files) | set(now) if before.files.get(k) != now.get(k)):
        changed.append(".git/" + rel)
        target = gitdir / rel
        remove(target)
        if rel in before.files:
            data = before.files[rel]
            target.parent.mkdir(parents=True, exist_ok=True)
            if data.startswith(b"link:"):
                os.symlink(data[5:].decode(), target)
            else:
                target.write_bytes(data)
    for d in sorted((p for p in gitdir.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        rel_dir = d.relative_to(gitdir)
        if not _object_data(rel_dir) and not any(
            k == str(rel_dir) or k.startswith(str(rel_dir) + "/") for k in before.files
        ):
            if not any(d.iterdir()):
                d.rmdir()  # a folder the editor made that is now empty
    return changed
