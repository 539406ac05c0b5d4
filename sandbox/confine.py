"""Confine a worker that runs code an editor wrote: the kernel decides what it may touch, not the code.

A code editor (Claude Code, the GUI fallback) changes the research code in a run's workspace and the
agent then runs a worker on that code. The worker needs the machine (CPU threads, GPUs, the interpreter,
the corpus, the token cache, its run folder) but nothing else of the user's: so it runs under bubblewrap
in a **file system built from a list**, not the host's with holes punched in it:

- the system read-only (``/usr`` and its ``/bin``, ``/lib`` links, ``/sys`` for device topology, and the
  ``/etc`` files libraries read: users, hosts, resolver, loader cache, certificates, alternatives, fonts;
  never ``/etc/shadow``, ``/root``, ``/home``, ``/run`` or ``/var``, so no other user's files and no
  service's socket);
- the interpreter, its virtual environment and the installed packages read-only (not the project folder
  around them, which may hold other runs); the readable paths the
  caller names (the workspace, the corpus, teacher models) read-only; the writable ones (its run folder,
  the token cache) read-write. A writable path that is, or passes through, a symbolic link inside one of
  the readable trees is refused: an edit could have planted ``runs/e001 -> ~/.ssh``;
- a private ``/tmp`` and an empty home, its own ``/proc`` and ``/dev`` (GPU device nodes bound through),
  new PID, IPC and UTS namespaces, a new session (no typing into the agent's terminal), no capabilities,
  the seccomp filter of :mod:`sandbox.seccomp` (no keyrings, ptrace, bpf, ...), and **no network** unless
  the experiment needs one (a Ray cluster, an API teacher: then it shares the host's network);
- a control group of its own (when the agent is root) bounding its tasks and memory, tmpfs included;
- ``--die-with-parent``: a killed agent takes its worker's whole namespace with it.

The environment is the caller's (already built from an allow-list by :mod:`sandbox.environment`).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import cgroups, seccomp

# /etc entries that libraries and toolchains read; bound when present.
ETC_ENTRIES = (
    "passwd",
    "group",
    "hosts",
    "hostname",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "fonts",
    "mime.types",
    "os-release",
    "protocols",
    "services",
    "machine-id",
    "pki",
    "crypto-policies",
    "gitconfig",
)
SYSTEM_ROOTS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt")
PROJECT_PACKAGES = ("nas", "distill", "kernels", "sandbox", "harness", "agent", "ccaa", "prompts")
GROUP_PREFIX = "autonas-worker-"
TMP_BYTES = 2 * 2**30  # the private /tmp (compiler caches, temporary files): a tmpfs, so memory


class ConfinementUnavailable(RuntimeError):
    """bubblewrap is missing, the kernel refuses its namespaces, or a path would let the worker out."""


@dataclass(frozen=True)
class Confinement:
    """What a confined worker may reach besides the read-only system."""

    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    network: bool = False
    home: Path = field(default_factory=Path.home)
    max_tasks: int = 4096  # threads and processes of the worker and everything it starts (a control group's pids.max)
    memory_bytes: int | None = None  # the control group's memory limit (tmpfs pages included); None: the machine's

    def describe(self) -> str:
        return (
            f"bubblewrap: system read-only, home empty, writable {', '.join(map(str, self.writable)) or 'nothing'}, "
            f"{'host network' if self.network else 'no network'}"
        )


def _code_paths() -> list[Path]:
    """The interpreter, its standard library, the virtual environment and the installed project."""
    project = Path(__file__).resolve().parents[1]  # an editable install's tree, or site-packages
    packages = {
        project / name for name in PROJECT_PACKAGES if (project / name).is_dir()
    }  # not runs/ or anything beside them
    return sorted(
        {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(sys.executable).resolve().parent.parent}
        | packages
    )


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_writable(path: Path, readable: list[Path]) -> None:
    """Refuse a writable path that is a link, or passes through one inside a readable tree (a planted link)."""
    lexical = Path(os.path.abspath(path))
    for part in [lexical, *lexical.parents]:
        if part.is_symlink() and (part == lexical or any(_under(part, r) and part != r for r in readable)):
            raise ConfinementUnavailable(
                f"refusing to let a worker write through the symbolic link {part} -> {os.readlink(part)}"
            )


def _system_args() -> list[str]:
    args: list[str] = []
    for name in SYSTEM_ROOTS:
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    for name in ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args + ["--ro-bind-try", "/sys", "/sys"]


def bwrap_prefix(c: Confinement, seccomp_fd: int) -> list[str]:
    """The ``bwrap ... --`` words to put before a worker command (raises :class:`ConfinementUnavailable`).

    ``seccomp_fd`` (from :func:`sandbox.seccomp.filter_fd`) must be passed to the child (``pass_fds``).
    """
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise ConfinementUnavailable(
            "bubblewrap is not installed (apt-get install bubblewrap): refusing to run edited code unconfined"
        )
    readable = [Path(os.path.abspath(p)) for p in c.readable]
    for w in c.writable:
        _check_writable(Path(w), readable)
    args = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--cap-drop",
        "ALL",
        *_system_args(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(TMP_BYTES),
        "--tmpfs",
        "/tmp",
        "--dir",
        str(c.home),
        "--seccomp",
        str(seccomp_fd),
    ]
    if not c.network:
        args.append("--unshare-net")
    for node in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
        args += ["--dev-bind", node, node]
    for p in _code_paths() + readable:
        if p.exists():
            args += ["--ro-bind", str(p), str(p)]
    for w in c.writable:
        w = Path(os.path.abspath(w))
        w.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(w), str(w)]
    return args + ["--"]


def _group_for(c: Confinement) -> cgroups.Group | None:
    """A control group bounding the worker's tasks and memory (root only; None where groups cannot be made)."""
    memory = c.memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cgroups.make(
        f"{GROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}", memory, c.max_tasks, stale_prefix=GROUP_PREFIX
    )


def _release_when_done(proc: subprocess.Popen, group: cgroups.Group) -> None:
    def release() -> None:
        proc.wait()
        group.kill()  # what the worker left behind in its group goes with it
        group.remove()

    threading.Thread(target=release, name="confined-worker-group", daemon=True).start()


def run_confined(cmd: list[str], c: Confinement, **popen_kw) -> subprocess.Popen:
    """Start ``cmd`` under ``c`` (``popen_kw`` as for :class:`subprocess.Popen`; its cwd must be readable inside).

    When this process is root, the worker runs in a control group of its own (``c.max_tasks``,
    ``c.memory_bytes``), joined by a shell before bwrap starts and removed once the worker has ended."""
    fd = seccomp.filter_fd()
    try:
        prefix = bwrap_prefix(c, fd)
        group = _group_for(c)
        pass_fds = tuple(popen_kw.pop("pass_fds", ())) + (fd,)
        head = cgroups.joining_prefix(group) if group is not None else []
        proc = subprocess.Popen(head + prefix + list(cmd), pass_fds=pass_fds, **popen_kw)
    finally:
        os.close(fd)
    if group is not None:
        _release_when_done(proc, group)
    return proc


def can_confine() -> str | None:
    """None when confinement works here, else one line saying why not."""
    try:
        proc = run_confined(
            ["true"],
            Confinement(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except ConfinementUnavailable as e:
        return str(e)
    _, err = proc.communicate(timeout=30)
    return None if proc.returncode == 0 else f"the kernel refused bubblewrap's namespaces: {err.strip()[:200]}"
