import sys
import time

import pytest

from sandbox.environment import WORKER, child_env
from sandbox.runner import run_limited
from sandbox.workspace import AGENT, Workspace, WorkspaceError


def test_experiments_commit_and_discard_keep_everything(tmp_path):
    ws = Workspace.create(tmp_path / "ws", "r1")
    assert ws.repo.active_branch.name == "autonas/r1"
    (ws.root / "arch.json").write_text('{"n_layers": 4}')
    sha = ws.commit_experiment(
        "train L4 d128", "why: deeper is better per parameter", {"val-bpb": 2.3141592, "kept": "yes"}
    )
    commit = ws.repo.commit(sha)
    assert commit.author.email == AGENT.email and "val-bpb: 2.31416" in commit.message
    (ws.root / "results.tsv").write_text("commit\tstatus\n")  # ignored: survives resets
    (ws.root / "arch.json").write_text('{"n_layers": 40}')
    (ws.root / "new.py").write_text("x = 1\n")
    ref_sha = ws.discard("e2", "train L40")
    assert (ws.root / "arch.json").read_text() == '{"n_layers": 4}' and not (ws.root / "new.py").exists()
    assert (ws.root / "results.tsv").exists()
    discarded = ws.repo.commit(ref_sha)
    assert ws.discarded_refs() == {"e2": ref_sha}
    diff = ws.repo.git.diff(sha, ref_sha)
    assert 'n_layers": 40' in diff and "new.py" in diff
    assert discarded.hexsha not in [c.hexsha for c in ws.repo.iter_commits("autonas/r1")]  # not on the branch
    exps = ws.experiments()
    assert [e.title for e in exps] == ["train L4 d128"] and exps[0].trailers["val-bpb"] == "2.31416"
    again = Workspace.open(ws.root, "r1")
    assert again.experiments() == exps


def test_foreign_changes_and_duplicate_runs_are_refused(tmp_path):
    root = tmp_path / "ws"
    Workspace.create(root, "r1")
    (root / "foreign.txt").write_text("someone else's work")
    with pytest.raises(WorkspaceError, match="uncommitted changes"):
        Workspace.create(root, "r2")
    (root / "foreign.txt").unlink()
    with pytest.raises(WorkspaceError, match="already exists"):
        Workspace.create(root, "r1")
    with pytest.raises(WorkspaceError, match="no branch"):
        Workspace.open(root, "nope")


def test_runner_kills_the_whole_group_on_timeout(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    out = run_limited([sys.executable, "-c", script], tmp_path, tmp_path / "log.txt", timeout_s=2, grace_s=1)
    assert out.timed_out and not out.ok
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _running(child)  # the grandchild went with its group


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper (PID 1 in a container may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_runner_memory_limit_and_allow_listed_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "t")
    monkeypatch.setenv("AUTONAS_HARMLESS", "1")
    env = child_env(WORKER)
    assert "ANTHROPIC_API_KEY" not in env and "MY_SERVICE_TOKEN" not in env and env["AUTONAS_HARMLESS"] == "1"
    code = "import os; print(sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k)); b = bytearray(2 * 1024**3)"
    out = run_limited([sys.executable, "-c", code], tmp_path, tmp_path / "log.txt", timeout_s=60, memory_mb=512)
    log = (tmp_path / "log.txt").read_text()
    assert out.returncode != 0 and "MemoryError" in log and "[]" in log
