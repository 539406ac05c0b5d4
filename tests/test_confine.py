"""Workers that run edited code, confined by bubblewrap: a real ``python -m nas train`` still trains, while the
code cannot read the home, /etc/shadow or a service's socket, write outside its run folder, reach a listener on
127.0.0.1, type into the terminal, use the keyrings, or be handed a writable link into the home."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.confine import Confinement, ConfinementUnavailable, can_confine, run_confined

REASON = can_confine()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no confinement here: {REASON}")

PROBE = r"""
import json, os, socket, sys
home, run, project, port = sys.argv[1:5]
seen = {"home_listing": sorted(os.listdir(home)), "canary": os.path.exists(os.path.join(home, "canary.txt"))}
for name, path in (("run", os.path.join(run, "ok.txt")), ("project", os.path.join(project, "escaped.txt")),
                   ("tmp", "/tmp/private.txt")):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        seen[name] = "written"
    except OSError as e:
        seen[name] = type(e).__name__
try:
    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
    seen["network"] = "connected"
except OSError as e:
    seen["network"] = type(e).__name__
for name, path in (("shadow", "/etc/shadow"), ("run_dir_listing", "/run"), ("var", "/var")):
    seen[name] = os.path.exists(path)
import ctypes
seen["keyctl"] = ctypes.CDLL(None, use_errno=True).syscall(250, 0, -3, 0)
import torch, nas
seen["imports"] = "ok"
print("SEEN" + json.dumps(seen))
"""


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _run_probe(c: Confinement, home: Path, run: Path, project: Path, port: int, cwd: Path) -> dict:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    out, err, code = _run(
        run_confined(
            [sys.executable, "-c", PROBE, str(home), str(run), str(project), str(port)],
            c,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    assert code == 0, err[-2000:]
    return json.loads(out.split("SEEN", 1)[1])


def _run(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str, int]:
    out, err = proc.communicate(timeout=timeout)
    return out, err, proc.returncode


def test_confined_code_sees_only_what_it_was_given(tmp_path: Path) -> None:
    home, run, project = tmp_path / "home", tmp_path / "ws" / "runs" / "e001", tmp_path / "project"
    for d in (home, run, project):
        d.mkdir(parents=True)
    (home / "canary.txt").write_text("a secret")
    listener = _listener()
    c = Confinement(writable=(run,), readable=(tmp_path / "ws", project), home=home)
    seen = _run_probe(c, home, run, project, listener.getsockname()[1], tmp_path / "ws")
    assert seen["home_listing"] == [] and not seen["canary"]
    assert seen["run"] == "written" and (run / "ok.txt").read_text() == "x"
    assert seen["project"] == "OSError" and not (project / "escaped.txt").exists()
    assert seen["tmp"] == "written" and not Path("/tmp/private.txt").exists()  # its own /tmp, gone with it
    assert seen["network"] in ("ConnectionRefusedError", "OSError", "TimeoutError") and seen["imports"] == "ok"
    assert not seen["shadow"] and not seen["run_dir_listing"] and not seen["var"]
    assert seen["keyctl"] == -1
    with_net = _run_probe(
        Confinement(writable=(run,), readable=(tmp_path / "ws", project), home=home, network=True),
        home,
        run,
        project,
        listener.getsockname()[1],
        tmp_path / "ws",
    )
    assert with_net["network"] == "connected"  # granted only to experiments that need it
    listener.close()


def test_a_confined_worker_cannot_type_into_the_terminal_it_was_started_from() -> None:
    """TIOCSTI: with the agent's terminal as the worker's stdin, pushed characters would run as commands after it."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    probe = "import fcntl, termios\nfcntl.ioctl(0, termios.TIOCSTI, b'Z')\nprint('typed')\n"
    launcher = (
        "import os, subprocess, sys\n"
        "from sandbox.confine import Confinement, run_confined\n"
        f"fd = os.open({name!r}, os.O_RDWR)  # a session leader's first terminal: its controlling terminal\n"
        f"p = run_confined([sys.executable, '-c', {probe!r}], Confinement(), stdin=fd, stdout=subprocess.PIPE,\n"
        "                 stderr=subprocess.PIPE, text=True, cwd='/')\n"
        "out, err = p.communicate(timeout=60)\n"
        "print('RESULT', p.returncode, out.strip(), (err.strip().splitlines() or [''])[-1])\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", launcher],
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    os.set_blocking(slave, False)
    try:
        pending = os.read(slave, 100)
    except BlockingIOError:
        pending = b""
    os.close(master)
    os.close(slave)
    assert "RESULT" in res.stdout, res.stderr[-2000:]
    assert "typed" not in res.stdout and b"Z" not in pending


def test_a_writable_link_planted_in_the_workspace_is_refused(tmp_path: Path) -> None:
    secret_dir = tmp_path / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    (tmp_path / "ws" / "runs").mkdir(parents=True)
    (tmp_path / "ws" / "runs" / "e001").symlink_to(secret_dir)
    with pytest.raises(ConfinementUnavailable, match="symbolic link"):
        run_confined(["true"], Confinement(writable=(tmp_path / "ws" / "runs" / "e001",), readable=(tmp_path / "ws",)))
    assert list(secret_dir.iterdir()) == []


def test_interpreter_hidden_by_the_home_is_bound_back() -> None:
    """When the home holds the interpreter (pyenv, a venv in the home), it is bound back read-only, alone."""
    home = Path(sys.base_prefix).resolve().parent
    out, err, code = _run(
        run_confined(
            [sys.executable, "-c", f"import os, torch; print(sorted(os.listdir({str(home)!r})))"],
            Confinement(home=home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
    )
    assert code == 0, err[-2000:]
    assert eval(out.strip()) == [Path(sys.base_prefix).resolve().name]


@pytest.mark.slow
def test_a_real_training_run_works_confined(tmp_path: Path, small_corpus_dir: Path) -> None:
    out = tmp_path / "ws" / "runs" / "e001"
    arch = tmp_path / "ws" / "arch.json"
    arch.parent.mkdir(parents=True)
    arch.write_text(
        json.dumps(
            {
                "n_layers": 1,
                "d_model": 32,
                "n_heads": 2,
                "n_kv_heads": 2,
                "d_ff": 64,
                "context_length": 64,
                "vocab_size": 256,
            }
        )
    )
    cache = Path(os.environ["AUTONAS_CACHE"])
    c = Confinement(writable=(out, cache), readable=(tmp_path / "ws", small_corpus_dir))
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "AUTONAS_CACHE": str(cache)}
    _, err, code = _run(
        run_confined(
            [
                sys.executable,
                "-m",
                "nas",
                "train",
                "--arch",
                str(arch),
                "--budget",
                "8ktok",
                "--corpus",
                str(small_corpus_dir),
                "--out",
                str(out),
                "--eval-bytes",
                "4000",
            ],
            c,
            cwd=tmp_path / "ws",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    assert code == 0, err[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_bpb"] > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="control groups are made by root only")
def test_a_confined_fork_bomb_stops_at_the_groups_task_limit() -> None:
    from sandbox import cgroups
    from sandbox.confine import GROUP_PREFIX

    if set(cgroups.hierarchies()) != set(cgroups.CONTROLLERS):
        pytest.skip("no memory and pids controllers here")
    bomb = (
        "import os, time\nn = 0\nfor _ in range(500):\n    try:\n"
        "        if os.fork() == 0:\n            time.sleep(20); os._exit(0)\n"
        "        n += 1\n    except OSError:\n        break\nprint('forked', n)\n"
    )
    out, err, code = _run(
        run_confined(
            [sys.executable, "-c", bomb],
            Confinement(max_tasks=32),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        ),
        timeout=120,
    )
    assert code == 0, err[-2000:]
    assert 0 < int(out.split("forked")[1]) < 32
    deadline = time.monotonic() + 10
    while (
        any(
            GROUP_PREFIX + str(os.getpid()) in str(d)
            for h in cgroups.hierarchies().values()
            for d in h.child("").iterdir()
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not any(
        GROUP_PREFIX + str(os.getpid()) in str(d) for h in cgroups.hierarchies().values() for d in h.child("").iterdir()
    )
