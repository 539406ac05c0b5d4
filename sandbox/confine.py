"""Confine a worker that runs code an editor wrote: the kernel decides what it may touch, not the code.

A code editor (Claude Code, the GUI fallback) changes the research code in a run's workspace and the
agent then runs a worker on that code. The worker needs the machine (CPU threads, GPUs, the interpreter,
the corpus, the token cache, its run folder) but nothing else of the user's: so it runs under bubblewrap
with

- the whole file system **read-only**, the user's **home and ``/tmp`` hidden** behind empty tmpfs mounts,
  and only what the worker provably needs bound back: the interpreter and virtual environment, the
  readable paths the caller names (the workspace, the corpus, teacher models) read-only, and the
  writable paths (its run folder, the token cache) read-write;
- its own ``/proc`` and ``/dev`` (GPU device nodes bound through), new PID, IPC and UTS namespaces, no
  capabilities, and **no network** unless the experiment needs one (a Ray cluster, an API teacher);
- ``--die-with-parent``: a killed agent takes its worker's whole namespace with it.

The environment is the caller's (already built from an allow-list by :mod:`sandbox.environment`).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path


class ConfinementUnavailable(RuntimeError):
    """bubblewrap is missing or the kernel refuses its namespaces."""


@dataclass(frozen=True)
class Confinement:
    """What a confined worker may reach besides the read-only system."""

    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    network: bool = False
    home: Path = field(default_factory=Path.home)

    def describe(self) -> str:
        return (f"bubblewrap: read-only system, {self.home} and /tmp hidden, writable {', '.join(map(str, self.writable)) or 'nothing'}, "
                f"{'network' if self.network else 'no network'}")


def _interpreter_paths() -> list[Path]:
    """The interpreter, its standard library and the virtual environment: bound back when the home hides them."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(sys.executable).resolve().parent.parent}
    return sorted(paths)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hidden_roots(c: Confinement) -> list[Path]:
    """Shallow first: a home inside /tmp (a test's) is hidden again inside /tmp's tmpfs."""
    return sorted({c.home.resolve(), Path("/tmp").resolve()}, key=lambda p: len(p.parts))


def bwrap_prefix(c: Confinement) -> list[str]:
    """The ``bwrap ... --`` words to put before a worker command (raises :class:`ConfinementUnavailable`)."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise ConfinementUnavailable("bubblewrap is not installed (apt-get install bubblewrap): refusing to run edited code unconfined")
    hidden = _hidden_roots(c)
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if not c.network:
        args.append("--unshare-net")
    for node in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
        args += ["--dev-bind", node, node]
    for root in hidden:
        args += ["--tmpfs", str(root)]
    bound: list[Path] = []
    for p in _interpreter_paths() + [Path(x).resolve() for x in c.readable]:
        if any(_under(p, h) for h in hidden) and p.exists() and not any(_under(p, b) for b in bound):
            args += ["--ro-bind", str(p), str(p)]
            bound.append(p)
    for p in c.writable:
        p = Path(p).resolve()
        p.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(p), str(p)]
    return args + ["--"]


def confined(cmd: list[str], c: Confinement) -> list[str]:
    """``cmd`` wrapped so that it runs under ``c``; its working directory must be visible inside."""
    return bwrap_prefix(c) + list(cmd)


def can_confine() -> str | None:
    """None when confinement works here, else one line saying why not."""
    import subprocess

    try:
        prefix = bwrap_prefix(Confinement())
    except ConfinementUnavailable as e:
        return str(e)
    res = subprocess.run(prefix + ["true"], capture_output=True, text=True, timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return None if res.returncode == 0 else f"the kernel refused bubblewrap's namespaces: {res.stderr.strip()[:200]}"
