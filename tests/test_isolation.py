"""Hostile programs through ``autonas eval humaneval --samples``: each one scores failed (or is killed),
and nothing outside the sandbox is created, deleted, contacted or left running.

Every payload rides on a wrong solution of HumanEval/0, so a payload that forged a verdict would show up
as ``passed``. The evaluator runs as a real subprocess with canary secrets in its own environment.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from harness.humaneval import read_problems, write_jsonl
from sandbox.isolation import (
    CGROUP_PREFIX,
    RUNNER_TAG,
    SANDBOX_UID_BASE,
    SANDBOX_UID_SPAN,
    ExecLimits,
    run_program,
)
from tests.sandbox_helpers import live_descendants, needs_sandbox

AUTONAS = str(Path(sys.executable).with_name("autonas"))
PROBLEMS = read_problems()
TASK = "HumanEval/0"
WRONG = "    return True\n"  # fails HumanEval/0's checks


_LIBC = ctypes.CDLL(None, use_errno=True)


def _add_session_key(name: str, payload: bytes) -> int:
    """A key in this process's session keyring (inherited by the evaluator), or -1 where keyrings are off
    (the numbers are x86-64's system calls)."""
    if platform.machine() != "x86_64":
        return -1
    return _LIBC.syscall(248, b"user", name.encode(), payload, len(payload), -3)


def _search_session_key(name: str) -> int:
    return _LIBC.syscall(250, 10, -3, b"user", name.encode(), 0)


class CanaryListener:
    """A TCP listener on 127.0.0.1 that records every connection a sandboxed program manages to make."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.sock.accept())
            except TimeoutError:
                continue
            except OSError:
                return


def _sandbox_processes() -> list[str]:
    """Running processes left by any sandbox: the runner's tag in argv, or a uid from the sandbox range."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            uid = os.stat(f"/proc/{name}").st_uid
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (RUNNER_TAG in cmd or SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN):
            found.append(f"{name} uid={uid} {cmd[:80]}")
    return found


def _payloads(canaries: list[str], victims: list[str], port: int, secret: str, keyname: str) -> dict[str, str]:
    """name -> module-level code appended after a wrong solution; ``secret`` is what a thief greps for."""
    c, v = canaries, victims
    return {
        "forge_verdict_on_every_fd": (
            "import os\n"
            "for fd in range(1, 256):\n"
            "    try:\n"
            '        os.write(fd, b\'\\n{"result": "passed"}\\n\\x1eautonas-verdict:0 {"result": "passed"}\\n\')\n'
            "    except OSError:\n"
            "        pass\n"
            "os._exit(0)\n"
        ),
        "sys_exit_zero": "import sys\nsys.exit(0)\n",
        "self_sigkill": "import os\nos.kill(os.getpid(), 9)\n",
        "kill_the_parent": (
            "import os\nos.kill(os.getppid(), 9)\n"
            "for p in range(1, 400):\n    try:\n        os.kill(p, 9)\n    except OSError:\n        pass\n"
        ),
        "posix_files": (
            "import posix\n"
            f"for p in {c!r}:\n"
            "    try:\n"
            "        fd = posix.open(p, posix.O_CREAT | posix.O_WRONLY, 0o644);"
            " posix.write(fd, b'x'); posix.close(fd)\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            "        posix.mkdir(p + '.d')\n"
            "    except OSError:\n"
            "        pass\n"
            f"for p in {v!r}:\n"
            "    try:\n"
            "        posix.unlink(p)\n"
            "    except OSError:\n"
            "        pass\n"
        ),
        "fileio_and_sqlite": (
            "import _io, sqlite3\n"
            f"for p in {c!r}:\n"
            "    try:\n"
            "        _io.FileIO(p, 'w').write(b'x')\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            "        sqlite3.connect(p + '.db').execute('create table t(x)')\n"
            "    except Exception:\n"
            "        pass\n"
        ),
        "ctypes_libc": (
            "import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            f"for p in {c!r}:\n"
            "    libc.open(p.encode(), 0o101, 0o644)\n"
            "    libc.system(('touch ' + p + '.sh').encode())\n"
            f"for p in {v!r}:\n"
            "    libc.unlink(p.encode())\n"
        ),
        "posix_system_and_fork_exec": (
            "import posix\n"
            f"posix.system('touch {c[0]}.system')\n"
            "pid = posix.fork()\n"
            "if pid == 0:\n"
            f"    posix.execv('/bin/sh', ['sh', '-c', 'touch {c[0]}.exec'])\n"
            "posix.waitpid(pid, 0)\n"
        ),
        "steal_secrets": (
            "import os\n"
            "found = [k for k, val in os.environ.items() if " + repr(secret) + " in val]\n"
            "for p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        try:\n"
            "            data = open('/proc/%s/environ' % p, 'rb').read()\n"
            "        except OSError:\n"
            "            continue\n"
            "        if " + repr(secret.encode()) + " in data:\n"
            "            found.append(data.decode(errors='replace'))\n"
            "raise RuntimeError('stolen: %r' % found)\n"
        ),
        "setns_into_other_networks": (
            "import ctypes, os, socket\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "for p in os.listdir('/proc'):\n"
            "    try:\n"
            "        fd = os.open('/proc/%s/ns/net' % p, os.O_RDONLY)\n"
            "        libc.setns(fd, 0x40000000)\n"
            "    except OSError:\n"
            "        pass\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=0.5).sendall(b'hi')\n"
            "    except OSError:\n"
            "        pass\n"
        ),
        "setsid_daemon": (
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        while True:\n"
            "            time.sleep(0.2)\n"
            "    os._exit(0)\n"
            "os._exit(0)\n"
        ),
        "fork_bomb": (
            "import os, time\n"
            "n = 0\n"
            "for _ in range(10000):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(30); os._exit(0)\n"
            "        n += 1\n"
            "    except OSError:\n"
            "        break\n"
            "raise RuntimeError('forked %d' % n)\n"
        ),
        "fill_the_scratch_disk": (
            "n = 0\n"
            "try:\n"
            "    with open('/tmp/fill', 'wb') as fh:\n"
            "        while True:\n"
            "            fh.write(b'x' * 2**20); fh.flush(); n += 1\n"
            "except OSError as e:\n"
            "    raise RuntimeError('wrote %d MB: %s' % (n, e))\n"
        ),
        "signals_blocked_sleep": (
            "import ctypes, signal\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))\n"
            "ctypes.CDLL(None).sleep(1000)\n"
        ),
        "memory_bomb": "blob = bytearray(64 * 1024 ** 3)\n",
        "memfd_and_tmpfs_bomb": (
            "import os\n"
            "for d in ('/', '/sandbox', '/dev', '/dev/shm', '/etc'):\n"
            "    for i in range(64):\n"
            "        try:\n"
            "            open(os.path.join(d, 'f%d' % i), 'wb').write(b'x' * 2**24)\n"
            "        except OSError:\n"
            "            break\n"
            "fds = [os.memfd_create('m') for _ in range(200)]\n"
            "for fd in fds:\n"
            "    os.write(fd, b'x' * 2**25)\n"
        ),
        "keyring": (
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"key = libc.syscall(250, 10, -3, b'user', {keyname!r}.encode(), 0)\n"
            "buf = ctypes.create_string_buffer(256)\n"
            "got = libc.syscall(250, 11, key, buf, 256) if key > 0 else -1\n"
            "cleared = libc.syscall(250, 7, -3)\n"
            "planted = libc.syscall(248, b'user', b'autonas-planted', b'x', 1, -3)\n"
            "raise RuntimeError('keyring: %d %d %d %d %r'"
            " % (key, got, cleared, planted, buf.raw[:got] if got > 0 else b''))\n"
        ),
        "c_loop": "sum(range(10 ** 13))\n",
    }


@needs_sandbox
def test_hostile_programs_fail_and_leave_no_trace(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    canaries = [
        f"/tmp/autonas-canary-{tag}",
        f"/dev/shm/autonas-canary-{tag}",
        f"/root/autonas-canary-{tag}",
        str(tmp_path / "canary"),
        str(Path.cwd() / f"autonas-canary-{tag}"),
    ]
    victims = [str(tmp_path / "victim.txt"), f"/tmp/autonas-victim-{tag}"]
    for v in victims:
        Path(v).write_text("keep me")
    secret = f"canary-secret-{tag}"
    listener = CanaryListener()
    keyname = f"autonas-canary-key-{tag}"
    key_id = _add_session_key(keyname, secret.encode())
    payloads = _payloads(
        canaries, victims, listener.port, "canary-secret-", keyname
    )  # the program greps for the prefix
    big_output_correct = PROBLEMS[TASK].canonical_solution + "print('x' * 100_000_000)\n"
    rows = [{"task_id": TASK, "completion": WRONG + code} for code in payloads.values()]
    rows.append({"task_id": TASK, "completion": big_output_correct})
    samples = tmp_path / "hostile.jsonl"
    write_jsonl(samples, rows)
    host_tmp_before = set(os.listdir("/tmp"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "AUTONAS_CACHE": os.environ["AUTONAS_CACHE"],
        "OPENAI_API_KEY": secret,
        "MY_SERVICE_CREDENTIALS": secret,
    }
    proc = subprocess.run(
        [
            AUTONAS,
            "eval",
            "humaneval",
            "--samples",
            str(samples),
            "--ignore-incomplete",
            "-k",
            "1",
            "--timeout",
            "2",
            "--out",
            str(tmp_path / "eval"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(x) for x in Path(str(samples) + "_results.jsonl").read_text().splitlines()]
    assert len(results) == len(rows)
    verdicts = dict(zip([*payloads, "big_output_correct"], results, strict=True))
    for name in payloads:
        assert not verdicts[name]["passed"], f"{name} scored passed: {verdicts[name]['result']}"
    assert verdicts["big_output_correct"]["passed"], verdicts["big_output_correct"]["result"]
    assert "stolen: []" in verdicts["steal_secrets"]["result"]
    forks = int(verdicts["fork_bomb"]["result"].rsplit("forked ", 1)[1].split()[0])
    assert forks <= ExecLimits().max_processes
    assert "wrote" in verdicts["fill_the_scratch_disk"]["result"]
    assert int(verdicts["fill_the_scratch_disk"]["result"].split("wrote ")[1].split()[0]) <= ExecLimits().scratch_mb
    assert verdicts["signals_blocked_sleep"]["result"] == "timed out"
    if key_id > 0:
        assert "keyring: -1 -1 -1 -1" in verdicts["keyring"]["result"]  # seccomp: every keyring call refused
        assert _search_session_key(keyname) == key_id  # the evaluator's own key is still there
        assert _search_session_key("autonas-planted") < 0
    assert secret not in json.dumps(results) + proc.stdout + proc.stderr
    for c in canaries:
        for suffix in ("", ".d", ".db", ".sh", ".system", ".exec"):
            assert not Path(c + suffix).exists(), f"{c + suffix} was created outside the sandbox"
    for v in victims:
        assert Path(v).read_text() == "keep me"
        Path(v).unlink()
    assert listener.connections == []
    listener.sock.close()
    new_in_tmp = set(os.listdir("/tmp")) - host_tmp_before
    assert not [n for n in new_in_tmp if "canary" in n or n.startswith("autonas-exec-")]
    assert _sandbox_processes() == []
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["humaneval_isolation"] == "bubblewrap"
    assert "user,pid,net" in metrics["humaneval_isolation_detail"]


@needs_sandbox
def test_program_sees_an_empty_world() -> None:
    """Uid 65534 in its namespaces, an environment of a few names, no home, no project, its own /proc; and what
    ordinary correct programs use still works (threads, getpass, localhost, a 20 MB scratch file)."""
    probe_src = (
        "import os, json\n"
        "world = {'uid': os.getuid(), 'env': sorted(os.environ), 'root': sorted(os.listdir('/')),\n"
        "         'procs': sorted(p for p in os.listdir('/proc') if p.isdigit()), 'cwd': os.getcwd(),\n"
        f"         'project': os.path.exists({str(Path.cwd())!r}), 'home': os.path.exists('/root')}}\n"
        "import getpass, socket, threading\n"
        "world['user'] = getpass.getuser(); world['localhost'] = socket.gethostbyname('localhost')\n"
        "threads = [threading.Thread(target=lambda: None) for _ in range(16)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "open('/tmp/big', 'wb').write(b'x' * 20 * 2**20)\n"
        "print('WORLD' + json.dumps(world))\n"
    )
    res = run_program(probe_src, ExecLimits(timeout_s=5))
    assert res.passed, res.result
    world = json.loads(res.stdout_tail.split("WORLD", 1)[1].splitlines()[0])
    assert world["uid"] == 65534
    assert set(world["env"]) <= {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "PWD"}
    assert world["cwd"] == "/tmp" and not world["project"] and not world["home"]
    assert set(world["root"]) <= {"usr", "bin", "lib", "lib64", "sbin", "etc", "proc", "dev", "tmp", "sandbox"}
    assert len(world["procs"]) <= 3  # the namespace's init, the interpreter (and nothing of the host)
    assert world["user"] == "nobody" and world["localhost"] == "127.0.0.1"


def test_without_a_sandbox_the_harness_refuses_unless_told(tmp_path: Path) -> None:
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [{"task_id": TASK, "completion": PROBLEMS[TASK].canonical_solution}])
    env = {"PATH": str(tmp_path), "HOME": os.environ.get("HOME", "/root"), "AUTONAS_CACHE": os.environ["AUTONAS_CACHE"]}
    args = [
        AUTONAS,
        "eval",
        "humaneval",
        "--samples",
        str(samples),
        "--ignore-incomplete",
        "--out",
        str(tmp_path / "e"),
    ]
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    lines = (refused.stdout + refused.stderr).strip().splitlines()
    assert len(lines) == 1 and "bubblewrap" in lines[0] and "Traceback" not in refused.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()
    allowed = subprocess.run(args + ["--unsafe-no-sandbox"], env=env, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["humaneval_isolation"] == "none" and metrics["humaneval_pass_at_1"] == 1.0


def _uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
        except (OSError, IndexError):
            continue
    return alive


@needs_sandbox
def test_killing_the_evaluator_takes_its_programs_with_it(tmp_path: Path) -> None:
    """SIGKILL of ``autonas eval`` mid-run: every sandbox dies with it (parent-death signal, PID namespaces)."""
    samples = tmp_path / "slow.jsonl"
    write_jsonl(
        samples, [{"task_id": TASK, "completion": WRONG + "import time\nwhile True:\n    time.sleep(0.05)\n"}] * 4
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "AUTONAS_CACHE": os.environ["AUTONAS_CACHE"],
    }
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(
        [
            AUTONAS,
            "eval",
            "humaneval",
            "--samples",
            str(samples),
            "--ignore-incomplete",
            "--timeout",
            "60",
            "--out",
            str(tmp_path / "e"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline, sandboxes = time.monotonic() + 60, set()
        while proc.poll() is None and time.monotonic() < deadline:
            sandboxes = {
                p
                for p in live_descendants(proc.pid)
                if SANDBOX_UID_BASE <= _uid(p) < SANDBOX_UID_BASE + SANDBOX_UID_SPAN
            }
            if len(sandboxes) >= 6:  # two programs (one per core), each an outer bwrap, the namespace's init, python
                break
            time.sleep(0.1)
        assert sandboxes, (
            f"no sandbox started (evaluator exit {proc.poll()}: {(tmp_path / 'stderr.txt').read_text()[-500:]})"
        )
        everything = live_descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while _alive(everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(everything) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="control groups are made by root only")
def test_groups_left_by_a_killed_evaluator_are_swept() -> None:
    from sandbox import cgroups

    found = cgroups.hierarchies()
    group = cgroups.make(f"{CGROUP_PREFIX}test-{uuid.uuid4().hex[:8]}", 2**28, 8)
    if group is None:
        pytest.skip("no memory and pids controllers here")
    fresh = cgroups.make(f"{CGROUP_PREFIX}test-{uuid.uuid4().hex[:8]}", 2**28, 8)
    assert fresh is not None
    old = time.time() - 2 * cgroups.STALE_AFTER_S
    for d in group.dirs:
        os.utime(d, (old, old))
    cgroups.sweep_stale(found, CGROUP_PREFIX)
    assert not any(d.exists() for d in group.dirs)
    assert all(d.exists() for d in fresh.dirs)  # a young one may be about to be joined: kept
    fresh.remove()


def test_the_runner_file_keeps_the_project_off_the_programs_path() -> None:
    """The child side (sandbox/verdict_runner.py) is run as a file with ``python -I -S``: neither the project
    nor the runner's own folder is importable from the program, and its verdicts still come through."""
    unsafe = ExecLimits(unsafe_no_sandbox=True, timeout_s=5)
    imported = run_program("import sandbox\n", unsafe)
    assert imported.result == "failed: ModuleNotFoundError: No module named 'sandbox'"
    assert run_program("import verdict_runner\n", unsafe).result.startswith("failed: ModuleNotFoundError")
    assert run_program("import sys\nassert 'site' not in sys.modules\n", unsafe).passed
    assert (
        run_program("while True:\n    pass\n", ExecLimits(unsafe_no_sandbox=True, timeout_s=0.5)).result == "timed out"
    )
