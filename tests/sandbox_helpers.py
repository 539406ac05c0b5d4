"""What the sandbox tests share: the mark that skips them where no kernel sandbox can start, and the live process
tree below a pid, read from /proc, which they use to prove nothing was left running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.isolation import probe

try:
    probe()
    SANDBOX_ERROR = None
except Exception as e:  # noqa: BLE001 - the reason is shown as the skip reason
    SANDBOX_ERROR = str(e)
needs_sandbox = pytest.mark.skipif(SANDBOX_ERROR is not None, reason=f"no kernel sandbox here: {SANDBOX_ERROR}")


def live_descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found
