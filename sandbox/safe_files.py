"""Reading what a confined worker left, from the agent's side, without following what it planted.

A worker that runs edited code may write anything into its own run folder: a link to a host file, a FIFO
that blocks the reader, a gigabyte of JSON, JSON nested a million deep. The agent (unconfined, often root)
reads and copies those files only through these functions: no link is followed (``O_NOFOLLOW``), only
regular files are read (a FIFO is opened non-blocking and refused), sizes are capped, and a file that is
not what it should be is an error for that experiment, never for the run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 4 * 2**20


class UnsafeFile(ValueError):
    """The file is a link, not a regular file, too large or malformed; the message says which."""


def _open_regular(path: str | Path) -> tuple[int, os.stat_result] | None:
    """A read descriptor of ``path`` and its status if it is a regular file, opened without following a final link
    and without blocking (a FIFO never hangs the reader); None if it does not exist. The caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:  # ELOOP: the last component is a link
        raise UnsafeFile(f"{path} cannot be opened safely ({err.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path} is not a regular file")
    return fd, st


def read_regular(path: str | Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (None if it does not exist)."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size > max_bytes:
            raise UnsafeFile(f"{path} is {st.st_size} bytes, more than the {max_bytes} allowed")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise UnsafeFile(f"{path} grew past {max_bytes} bytes while being read")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_head(path: str | Path, max_bytes: int) -> tuple[bytes, bool] | None:
    """At most ``max_bytes`` of ``path`` if it is a regular file (None if it does not exist), and whether it was cut:
    for a reader that shows the start of a file of any size (a page), where :func:`read_regular` refuses it whole."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd = opened[0]
    try:
        chunks, total = [], 0
        while total <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
        return data[:max_bytes], len(data) > max_bytes
    finally:
        os.close(fd)


def read_json_object(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any] | None:
    """A JSON object from ``path`` (None if missing); :class:`UnsafeFile` for anything else."""
    data = read_regular(path, max_bytes)
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UnsafeFile(f"{path} is not JSON ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise UnsafeFile(f"{path} holds a {type(obj).__name__}, not a JSON object")
    return obj


def copy_regular(src: str | Path, dst: str | Path, max_bytes: int) -> bool:
    """Copy ``src`` to ``dst`` if it is a regular file (False if missing); ``dst`` is replaced, never followed."""
    data = read_regular(src, max_bytes)
    if data is None:
        return False
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp-copy")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    return True


def remove(path: str | Path) -> None:
    """Remove whatever stands at ``path``: a link itself (never its target), a file, or a folder with its contents."""
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)
