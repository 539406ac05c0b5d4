"""git for the agent's workspaces, where an editor (an LLM with write access) may have planted code.

Git runs code named by its repository: hooks (``.git/hooks/post-commit``), ``core.fsmonitor``, clean/smudge
filters, ``diff.external``, pagers. Every git the agent starts in a workspace therefore goes through
:func:`executable`, a wrapper that

- gets an environment built from the tool allow-list (:data:`sandbox.environment.TOOL`, no keys), plus
  the ``GIT_*`` variables that select an index, a directory or an identity;
- passes ``-c core.hooksPath=/dev/null -c core.fsmonitor=false``, so hooks and fsmonitor never run.

Config-borne commands (filters, ``diff.external``) are refused at the source instead: an edit that changes
``.git/config``, ``.git/hooks`` or ``.git/info`` fails and is restored (:func:`protected_state`,
:func:`restore_protected`). GitPython is pointed at the wrapper once (:func:`use_for_gitpython`).
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import tempfile
from pathlib import Path

from sandbox.environment import TOOL, child_env

SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
PASSED_GIT_VARS = ("GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_AUTHOR_DATE",
                   "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "GIT_COMMITTER_DATE", "GIT_TERMINAL_PROMPT")
PROTECTED = ("config", "hooks", "info")  # under .git: what names commands git would run


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a workspace git gets: tool basics, never a key."""
    return child_env(TOOL, extra)


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
    path = folder / "git"
    project = Path(__file__).resolve().parents[1]
    body = _WRAPPER.format(python=sys.executable).replace(
        "import os, sys\n", f"import os, sys\nsys.path.insert(0, {str(project)!r})\n", 1)
    path.write_text(body)
    path.chmod(stat.S_IRWXU)
    return str(path)


def use_for_gitpython() -> None:
    """Every GitPython call in this process goes through the wrapper."""
    import git

    if getattr(git.Git, "GIT_PYTHON_GIT_EXECUTABLE", None) != executable():
        git.refresh(executable())


def protected_state(workspace: Path) -> dict[str, bytes]:
    """The bytes of every file under ``.git/{config,hooks,info}``, keyed by path relative to ``.git``."""
    gitdir = Path(workspace) / ".git"
    out: dict[str, bytes] = {}
    for name in PROTECTED:
        p = gitdir / name
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() or q.is_symlink()) if p.is_dir() else []
        for f in files:
            try:
                out[str(f.relative_to(gitdir))] = os.readlink(f).encode() if f.is_symlink() else f.read_bytes()
            except OSError:
                out[str(f.relative_to(gitdir))] = b"<unreadable>"
    return out


def restore_protected(workspace: Path, before: dict[str, bytes]) -> list[str]:
    """Put ``.git/{config,hooks,info}`` back as ``before``; returns the paths that had changed."""
    gitdir = Path(workspace) / ".git"
    now = protected_state(workspace)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    for rel in changed:
        target = gitdir / rel
        if target.is_symlink() or target.exists():
            target.unlink()
        if rel in before:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(before[rel])
    return changed
