"""A run's git workspace: configs, results and journal on a branch ``autonas/<run-id>``.

A kept experiment is one commit by the agent identity, its message saying what was tried, why, and the
numbers as trailers (``val-bpb: 2.31``). A discarded experiment is reset, but its full diff is kept as a
commit under ``refs/autonas/discarded/<id>`` (outside every branch), so a reviewer sees everything that
was tried. ``results.tsv`` and ``journal.md`` are ignored by git: they record discards too and survive
every reset. Git runs through :mod:`sandbox.gitexe`: no hooks, no fsmonitor, no keys in its environment.
This module is the one way the project runs git in a workspace (GitPython over that wrapper); the editors'
raw commands go through :func:`run_git`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import git

from sandbox import gitexe


class WorkspaceError(Exception):
    """A workspace problem the user can fix (foreign changes, missing branch); one line for the CLI."""


AGENT = git.Actor("AutoNAS agent", "agent@autonas.local")
IGNORED = ("results.tsv", "journal.md", "runs/", "*.safetensors", "__pycache__/")


@dataclass(frozen=True)
class ExperimentCommit:
    sha: str
    title: str
    trailers: dict[str, str]


class Workspace:
    def __init__(self, root: Path, run_id: str, repo: git.Repo):
        self.root, self.run_id, self.repo = root, run_id, repo

    @property
    def branch(self) -> str:
        return f"autonas/{self.run_id}"

    @classmethod
    def create(cls, root: str | Path, run_id: str) -> Workspace:
        """A new repository (or a new branch in an existing clean one) for this run."""
        gitexe.use_for_gitpython()
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        try:
            repo = git.Repo(root)
        except git.InvalidGitRepositoryError:
            repo = git.Repo.init(root)
        ws = cls(root, run_id, repo)
        if repo.head.is_valid():
            ws.ensure_clean()
            if ws.branch in [h.name for h in repo.heads]:
                raise WorkspaceError(
                    f"branch {ws.branch} already exists in {root}: resume that run or choose another run id"
                )
            repo.create_head(ws.branch).checkout()
        else:
            repo.git.checkout("-b", ws.branch)
        gi = root / ".gitignore"
        lines = gi.read_text().splitlines() if gi.exists() else []
        gi.write_text("\n".join(lines + [p for p in IGNORED if p not in lines]) + "\n")
        repo.index.add([".gitignore"])
        repo.index.commit(f"autonas run {run_id}: workspace", author=AGENT, committer=AGENT, skip_hooks=True)
        return ws

    def seed_code(self, files: dict[str, bytes]) -> str:
        """Write the model code (relative path -> bytes, e.g. ``nas/model.py``) into the workspace and commit it.

        Workers run with this folder named in ``AUTONAS_MODEL_CODE``, so an editor's change to these files (a new
        attention variant, another MLP) is what the next experiment trains, and each such change is a reviewable diff
        of the run's history. Only model code is seeded: the measurement (``harness``) never enters a workspace."""
        for rel, data in files.items():
            target = self.root / rel
            if target.exists():
                raise WorkspaceError(f"workspace {self.root} already has {rel}; cannot seed the code into it")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.repo.git.add(A=True)
        names = ", ".join(sorted(files))
        commit = self.repo.index.commit(
            f"autonas run {self.run_id}: model code ({names}) the workers run and the editors change\n",
            author=AGENT,
            committer=AGENT,
            skip_hooks=True,
        )
        return commit.hexsha

    def has_code(self, package: str = "nas") -> bool:
        """Whether this run's workers run the workspace's model code (a code editor is configured)."""
        return (self.root / package / "model.py").is_file()

    def carries_whole_package(self, package: str = "nas") -> bool:
        """A workspace made by an older version held the whole package (harness included): it cannot be resumed."""
        return (self.root / package / "__init__.py").is_file()

    @classmethod
    def open(cls, root: str | Path, run_id: str) -> Workspace:
        root = Path(root)
        gitexe.use_for_gitpython()
        try:
            repo = git.Repo(root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"no workspace at {root}") from None
        ws = cls(root, run_id, repo)
        if ws.branch not in [h.name for h in repo.heads]:
            raise WorkspaceError(f"workspace {root} has no branch {ws.branch}")
        repo.heads[ws.branch].checkout()
        return ws

    def _changed_paths(self) -> list[str]:
        """Tracked files changed in the working tree, then untracked ones.

        A working-tree diff always names the old path (``a_path``); ``b_path`` is only a fallback for the types.
        """
        tracked = [p for d in self.repo.index.diff(None) if (p := d.a_path or d.b_path)]
        return tracked + list(self.repo.untracked_files)

    def ensure_clean(self) -> None:
        """Refuse to work over changes that are not ours."""
        if self.repo.is_dirty(untracked_files=True):
            changed = self._changed_paths()
            raise WorkspaceError(
                f"workspace {self.root} has uncommitted changes that are not the agent's ({', '.join(changed[:5])}); "
                "commit or remove them first"
            )

    def ensure_clean_except_agent(self, agent_paths: tuple[str, ...] = ("configs/",)) -> None:
        """On resume: changes in the agent's own config files are an experiment in flight (its edit node ran
        before a kill); anything else is someone else's and stops the run."""
        changed = self._changed_paths()
        foreign = [p for p in changed if not p.startswith(agent_paths)]
        if foreign:
            raise WorkspaceError(
                f"workspace {self.root} has uncommitted changes that are not the agent's ({', '.join(foreign[:5])}); "
                "commit or remove them first"
            )

    def has_changes(self) -> bool:
        return self.repo.is_dirty(untracked_files=True)

    def commit_experiment(self, title: str, body: str, trailers: dict[str, str | float | int]) -> str:
        """Commit every change in the tree as one experiment; returns the commit sha."""
        self.repo.git.add(A=True)
        lines = [title.strip(), "", body.strip(), ""] + [f"{k}: {_fmt(v)}" for k, v in trailers.items()]
        commit = self.repo.index.commit(
            "\n".join(lines).strip() + "\n", author=AGENT, committer=AGENT, skip_hooks=True
        )  # GitPython runs hooks itself, with our whole environment
        return commit.hexsha

    def discard(self, experiment_id: str, title: str) -> str | None:
        """Keep the change under ``refs/autonas/discarded/<id>`` and reset the tree; returns that commit's sha."""
        if not self.has_changes():
            return None
        self.repo.git.add(A=True)
        tree = self.repo.index.write_tree()
        commit = git.Commit.create_from_tree(
            self.repo,
            tree,
            f"discarded: {title}\n",
            parent_commits=[self.repo.head.commit],
            author=AGENT,
            committer=AGENT,
        )
        self.repo.git.update_ref(f"refs/autonas/discarded/{experiment_id}", commit.hexsha)
        self.reset_tree()  # ignored files (results.tsv, journal, runs/) stay
        return commit.hexsha

    def reset_tree(self) -> None:
        """Back to the last commit: tracked changes undone, untracked files removed (ignored ones, e.g. runs/, stay)."""
        self.repo.head.reset(index=True, working_tree=True)
        self.repo.git.clean("-fd")

    def experiments(self) -> list[ExperimentCommit]:
        """The agent's kept experiments on this run's branch, oldest first, with their trailers."""
        out = []
        for c in reversed(list(self.repo.iter_commits(self.branch))):
            message = str(c.message)  # GitPython types it str | bytes; it decodes commit messages to str
            if c.author.email != AGENT.email or message.startswith(f"autonas run {self.run_id}: "):
                continue
            trailers = {}
            for line in message.strip().splitlines()[1:]:
                key, sep, value = line.partition(": ")
                if sep and key and " " not in key:
                    trailers[key] = value
            out.append(ExperimentCommit(c.hexsha, message.splitlines()[0], trailers))
        return out

    def discarded_refs(self) -> dict[str, str]:
        return {
            r.path.rsplit("/", 1)[-1]: r.commit.hexsha
            for r in self.repo.refs
            if r.path.startswith("refs/autonas/discarded/")
        }


def run_git(root: Path, *args: str, env: Mapping[str, str] | None = None, check: bool = True) -> bytes:
    """One git command in ``root``, run as every workspace git runs: through GitPython, whose executable is
    :mod:`sandbox.gitexe`'s wrapper (no hooks, no fsmonitor, no system or global config, no keys). For the
    commands the :class:`Workspace` methods do not cover (the editors' tree snapshots through a private index).

    ``env`` may only set git's own variables (:data:`~sandbox.gitexe.PASSED_GIT_VARS`, e.g. ``GIT_INDEX_FILE``):
    the wrapper drops every other one, so asking for another is a mistake said at once. Returns stdout byte
    for byte (a patch must stay appliable); with ``check`` a failure raises RuntimeError with git's message."""
    extra = dict(env or {})
    dropped = sorted(set(extra) - set(gitexe.PASSED_GIT_VARS))
    if dropped:
        raise ValueError(f"git would never see {', '.join(dropped)}: only {', '.join(gitexe.PASSED_GIT_VARS)} pass")
    gitexe.use_for_gitpython()
    cmd = git.Git(root)
    code, out, err = cmd.execute(
        [cmd.GIT_PYTHON_GIT_EXECUTABLE, *args],
        with_extended_output=True,
        with_exceptions=False,
        stdout_as_string=False,
        strip_newline_in_stdout=False,
        env=extra,
    )
    if check and code != 0:
        message = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
        raise RuntimeError(f"git {' '.join(args)} failed: {message.strip()}")
    return out


def run_git_head(root: Path, *args: str, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of one git command's stdout (run as :func:`run_git` runs it) and whether it had
    more; git is stopped once that much is read. For a reader that shows output of any size (a console page over a
    commit an editor made huge) without holding all of it in memory. Git's failures are not raised: its stdout,
    often empty, is the answer."""
    gitexe.use_for_gitpython()
    cmd = git.Git(root)
    handle = cmd.execute([cmd.GIT_PYTHON_GIT_EXECUTABLE, *args], as_process=True, stdout_as_string=False)
    proc = handle.proc
    assert proc is not None and proc.stdout is not None and proc.stderr is not None  # as_process pipes both
    stdout, stderr = proc.stdout, proc.stderr
    drain = threading.Thread(target=stderr.read, daemon=True)  # a full stderr pipe must not stall git
    drain.start()
    try:
        chunks, total = [], 0
        while total <= limit and (chunk := stdout.read(min(1 << 20, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        drain.join()
        for pipe in (stdout, stderr, proc.stdin):
            if pipe is not None:
                pipe.close()
    return data[:limit], len(data) > limit


def _fmt(v: str | float | int) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
