"""Children get an allow-listed environment: secrets with names no deny-list knows, set in this process, never
reach a real worker started by the agent's runner, an executor's worker process, Claude Code or git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas.space import ArchConfig
from sandbox.environment import CLAUDE_CODE_EDITOR, GUI_EDITOR, TOOL, WORKER, child_env, environ_limited_to, grant
from tests.canaries import CANARIES, environ_of, leaks

SETTINGS = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/u",
    "LANG": "C.UTF-8",
    "LC_CTYPE": "C.UTF-8",
    "TMPDIR": "/scratch",
    "PYTHONHASHSEED": "0",
    "AUTONAS_CACHE": "/c",
    "CUDA_VISIBLE_DEVICES": "1",
    "OMP_NUM_THREADS": "2",
    "NCCL_DEBUG": "WARN",
    "RAY_ADDRESS": "127.0.0.1:6379",
    "TRITON_CACHE_DIR": "/t",
    "HF_HOME": "/hf",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HTTPS_PROXY": "http://proxy:3128",
}


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-for-claude-only")


def test_the_allow_list_admits_settings_and_drops_unknown_secrets() -> None:
    base = {
        **SETTINGS,
        **CANARIES,
        "ANTHROPIC_API_KEY": "a",
        "ANTHROPIC_BASE_URL": "http://x",
        "DISPLAY": ":1",
        "HTTP_PROXY": "http://user:pw@proxy:3128",
        "HF_HUB_TOKEN": "h",
        "TRANSFORMERS_PASSWORD": "p",
        "NVIDIA_API_KEY": "n",
    }
    worker = child_env(WORKER, {"PYTHONUNBUFFERED": "1"}, base=base)
    assert worker == {**SETTINGS, "PYTHONUNBUFFERED": "1"}  # no key, no display, no proxy with a password
    editor = child_env(CLAUDE_CODE_EDITOR, base=base)
    assert editor["ANTHROPIC_API_KEY"] == "a" and editor["PATH"] == SETTINGS["PATH"] and editor["HTTPS_PROXY"]
    assert (
        not leaks("\n".join(f"{k}={v}" for k, v in editor.items()))
        and "DISPLAY" not in editor
        and "AUTONAS_CACHE" not in editor
    )
    assert child_env(GUI_EDITOR, base=base)["DISPLAY"] == ":1"
    assert child_env(TOOL, base=base).keys() == {"PATH", "HOME", "LANG", "LC_CTYPE", "TMPDIR"}
    teacher = child_env((*WORKER, grant("OPENAI_API_KEY")), base=base)
    assert teacher["OPENAI_API_KEY"] == CANARIES["OPENAI_API_KEY"] and leaks("\n".join(teacher)) == ["OPENAI_API_KEY"]


def test_environ_limited_to_restores_everything(canaries: None) -> None:
    before = dict(os.environ)
    with environ_limited_to(WORKER):
        assert not leaks("\n".join(f"{k}={v}" for k, v in os.environ.items())) and os.environ["PATH"] == before["PATH"]
    assert dict(os.environ) == before


def _write_arch(path: Path) -> Path:
    path.write_text(
        ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=64).model_dump_json()
    )
    return path


def _find(marker: str, deadline_s: float) -> int | None:
    """The pid of a live process whose command line holds ``marker``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()):
                try:
                    if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        return int(entry.name)
                except OSError:
                    continue
        time.sleep(0.02)
    return None


def test_a_worker_started_by_the_agents_runner_sees_no_secret(
    tmp_path: Path, small_corpus_dir: Path, canaries: None
) -> None:
    from agent.graph import experiment_env
    from sandbox.runner import run_limited
    from sandbox.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws", "env1")
    out = tmp_path / "train-out-canary-check"
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "train",
        "--arch",
        str(_write_arch(tmp_path / "arch.json")),
        "--corpus",
        str(small_corpus_dir),
        "--budget",
        "2ktok",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--eval-bytes",
        "2000",
        "--quiet",
    ]
    log = tmp_path / "worker.log"
    done: dict = {}
    runner = threading.Thread(
        target=lambda: done.update(outcome=run_limited(cmd, ws.root, log, timeout_s=300, env=experiment_env(ws)))
    )
    runner.start()
    pid = _find(str(out), deadline_s=60)
    seen = environ_of(pid) if pid else None
    runner.join()
    assert seen is not None, "the worker was not seen running"
    assert leaks(seen) == [] and "ANTHROPIC_API_KEY" not in seen
    assert f"PATH={os.environ['PATH']}\n" in seen + "\n" and f"AUTONAS_CACHE={os.environ['AUTONAS_CACHE']}" in seen
    assert done["outcome"].ok, log.read_text()[-2000:]  # and the worker still does its job with what it was given
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok" and leaks(log.read_text()) == []


def test_executor_workers_see_no_secret(tmp_path: Path, canaries: None) -> None:
    from nas.executors import LocalExecutor

    ex = LocalExecutor(workers=1, log_path=str(tmp_path / "workers.log"))
    try:
        proc = ex.workers[0].process
        assert proc is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # it starts and imports torch with what it was given
        seen = environ_of(proc.pid)  # read once it runs: right after exec the kernel may not have set it up yet
    finally:
        ex.shutdown()
    assert seen is not None and leaks(seen) == [] and "ANTHROPIC_API_KEY" not in seen
    assert "OMP_NUM_THREADS=" in seen and f"PATH={os.environ['PATH']}" in seen
    assert leaks((tmp_path / "workers.log").read_text()) == []


def _git_workspace(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / ".gitignore").write_text("runs/\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


def test_claude_code_gets_anthropic_settings_only(
    tmp_path: Path, canaries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ``claude`` binary reports the environment it was started with, as a result event."""
    from ccaa.claude_code import ClaudeCodeEditor
    from ccaa.editor import EditInstruction

    fake = tmp_path / "bin" / "claude"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json\n"
        "env = open('/proc/self/environ', 'rb').read().decode().replace('\\0', '\\n')\n"
        "open('seen.txt', 'w').write(env)\n"
        "print(json.dumps({'type': 'result', 'subtype': 'success', 'is_error': False, 'num_turns': 1,"
        " 'result': env}))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    ws = _git_workspace(tmp_path / "ws")
    result = ClaudeCodeEditor(binary=str(fake)).edit(
        ws, EditInstruction(text="change nothing", log_dir=ws / "runs" / "edit", timeout_s=60)
    )
    assert result.ok and result.files_changed == ("seen.txt",), result.error
    assert result.transcript is not None
    seen = json.loads(result.transcript.read_text().splitlines()[-1])["result"]
    assert (
        leaks(seen) == []
        and "ANTHROPIC_API_KEY=sk-ant-for-claude-only" in seen
        and "ANTHROPIC_BASE_URL=http://127.0.0.1:9" in seen
    )
    assert f"PATH={os.environ['PATH']}" in seen and "AUTONAS_CACHE" not in seen


def test_gui_terminal_and_git_get_no_secret(tmp_path: Path, canaries: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccaa.editor import _git
    from ccaa.gui import GuiEditor

    monkeypatch.setenv("DISPLAY", ":77")
    monkeypatch.setenv("XAUTHORITY", str(tmp_path / "xauth"))
    env = GuiEditor(command=["true"]).terminal_env(tmp_path / "home")
    assert (
        env["DISPLAY"] == ":77"
        and env["ANTHROPIC_API_KEY"] == "sk-ant-for-claude-only"
        and env["HOME"] == str(tmp_path / "home")
    )
    assert leaks("\n".join(f"{k}={v}" for k, v in env.items())) == []
    seen = _git(
        _git_workspace(tmp_path / "ws"), "-c", "alias.envdump=!env", "envdump"
    )  # what a hook or alias would see
    assert (
        leaks(seen) == [] and "ANTHROPIC_API_KEY" not in seen and "DISPLAY" not in seen and os.environ["PATH"] in seen
    )


@pytest.mark.slow
def test_a_local_ray_cluster_runs_tasks_without_secrets(canaries: None) -> None:
    pytest.importorskip("ray")
    from nas.executors import RayExecutor

    ex = RayExecutor("local")
    try:
        read = ex.ray.remote(
            lambda: open("/proc/self/environ", "rb").read().decode(errors="replace").replace("\0", "\n")
        )
        seen = ex.ray.get(read.remote(), timeout=120)
    finally:
        ex.shutdown()
    assert leaks(seen) == [] and "ANTHROPIC_API_KEY" not in seen
    assert CANARIES["AZURE_OPENAI_KEY"] == os.environ["AZURE_OPENAI_KEY"]  # the driver's own environment is back
