"""A throw-away control group per sandbox: the kernel's bound on a program's memory (tmpfs, shared memory
and memfd pages included, which no rlimit counts) and on its tasks (threads and processes together).

Works with cgroup v1 (a hierarchy per controller, as this machine mounts them) and v2 (one unified
hierarchy, where our own group must be able to delegate ``memory`` and ``pids`` to a child). The group is
made as a child of the group this process is in, so whatever limit the machine already puts on us still
holds above it. Joining happens in a root shell that then drops to the sandbox uid (util-linux's
``setpriv``): no Python code runs between fork and exec. Where groups cannot be made (not root, a v2 group
that cannot delegate, no controllers), :func:`make` returns None and the caller records it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class Hierarchy:
    """Where one controller's groups live: the mount point and our own group's path under it."""

    controller: str
    mount: Path
    own: str  # our group, e.g. "/process_api/4bb1..."
    v2: bool

    def child(self, name: str) -> Path:
        return self.mount / self.own.lstrip("/") / name


def _mounts() -> list[tuple[Path, str, set[str]]]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = (right.split() + ["", "", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            out.append((Path(left.split()[4]), fstype, set(options.split(","))))
    return out


def hierarchies() -> dict[str, Hierarchy]:
    """The memory and pids hierarchies this process can see, v1 preferred per controller."""
    own_v1: dict[str, str] = {}
    own_v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names == "":
            own_v2 = path
        for n in names.split(","):
            own_v1[n] = path
    found: dict[str, Hierarchy] = {}
    for mount, fstype, options in _mounts():
        if fstype == "cgroup":
            for c in CONTROLLERS:
                if c in options and c in own_v1:
                    found[c] = Hierarchy(c, mount, own_v1[c], v2=False)
    for mount, fstype, _ in _mounts():
        if fstype == "cgroup2" and own_v2 is not None:
            try:
                available = (mount / own_v2.lstrip("/") / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            for c in CONTROLLERS:
                if c in available and c not in found:
                    found[c] = Hierarchy(c, mount, own_v2, v2=True)
    return found


@dataclass
class Group:
    """One sandbox's groups (one directory per hierarchy); :meth:`remove` after the sandbox ended."""

    dirs: list[Path]

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def kill(self) -> None:
        for d in self.dirs:
            if (d / "cgroup.kill").exists():
                _write(d / "cgroup.kill", "1")
                continue
            for pid in _read_pids(d):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass

    def empty(self) -> bool:
        return not any(_read_pids(d) for d in self.dirs)

    def wait_empty(self, patience_s: float = 5.0) -> bool:
        """After :meth:`kill`: wait (briefly sleeping, from 0.5 ms up to 20 ms) until no task is left in the
        group, killing again meanwhile; False when some task outlived ``patience_s``."""
        end, pause = time.monotonic() + patience_s, 0.0005
        while not self.empty():
            if time.monotonic() > end:
                return False
            self.kill()
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        return True

    def remove(self, patience_s: float = 5.0) -> None:
        end, pause = time.monotonic() + patience_s, 0.0005
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        break
                    self.kill()
                    time.sleep(pause)
                    pause = min(pause * 2, 0.02)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read_pids(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


STALE_AFTER_S = 600.0  # an empty group this old was left by a killed evaluator (a live one joins within seconds)


def sweep_stale(found: dict[str, Hierarchy], prefix: str) -> None:
    """Remove empty groups named ``prefix*`` that a killed evaluator left behind (a non-empty one refuses rmdir)."""
    now = time.time()
    for h in found.values():
        parent = h.child("")
        try:
            candidates = [d for d in parent.iterdir() if d.name.startswith(prefix) and d.is_dir()]
        except OSError:
            continue
        for d in candidates:
            try:
                if now - d.stat().st_mtime > STALE_AFTER_S:
                    d.rmdir()
            except OSError:
                pass


def make(name: str, memory_bytes: int, max_tasks: int, stale_prefix: str | None = None) -> Group | None:
    """Groups named ``name`` with the two limits, or None where this process cannot make them.

    ``stale_prefix``: first remove old empty groups of that name prefix (see :func:`sweep_stale`)."""
    if os.geteuid() != 0:
        return None
    found = hierarchies()
    if set(found) != set(CONTROLLERS):
        return None
    if stale_prefix:
        sweep_stale(found, stale_prefix)
    made: list[Path] = []
    try:
        for c in CONTROLLERS:
            h = found[c]
            d = h.child(name)
            if d in made:
                continue
            d.mkdir()
            made.append(d)
            if h.v2:
                _write(d / "memory.max", str(memory_bytes))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
                _write(d / "pids.max", str(max_tasks))
            elif c == "memory":
                _write(d / "memory.limit_in_bytes", str(memory_bytes))
                if (d / "memory.memsw.limit_in_bytes").exists():
                    _write(d / "memory.memsw.limit_in_bytes", str(memory_bytes))
            else:
                _write(d / "pids.max", str(max_tasks))
    except OSError:
        Group(made).remove(patience_s=0.5)
        return None
    return Group(made)


def joining_prefix(group: Group) -> list[str]:
    """A root shell that moves itself into ``group`` and then execs the rest of the command line."""
    script = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["sh", "-c", script, "sh", *group.procs_files(), "--"]
