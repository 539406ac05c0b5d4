"""The run-file contract: every worker run leaves ``metrics.json`` and ``log.txt`` in its run folder.

``metrics.json`` is one flat JSON object: numbers, booleans, short strings and nulls, units in the key
(``val_bpb``, ``params``, ``size_bytes_int8``, ``latency_ms_p50``, ``wall_s``). :class:`RunMetrics` types the
keys that more than one reader relies on; any other key is allowed but must be flat as well. There is one
writer (:func:`write_metrics`: validates, then tmp + fsync + rename, so a reader sees the whole file or none)
and one reader (:func:`read_metrics`), used by the workers, the agent's run node, the judge and the report.

A run folder may have been written by edited, untrusted code: the reader follows no link, opens only a
regular file (a FIFO is refused without blocking), caps the size, refuses NaN / infinity, nesting and
over-long strings, and ends every refusal in one line (:class:`RunFileError`, a :class:`UserError`).

One word per idea, in code and in every file:

- a run's outcome is its ``status`` (:data:`Status`); a run that ended without a result of its own (an exception,
  a worker that died, a file it wrote wrong) is ``crashed``. Earlier versions also said ``failed``: the reader
  maps it (:data:`OLD_STATUS`), nothing writes it.
- the text that says why a run did not end ``ok`` is ``fail_reason`` (metrics.json, a trial's result, a search
  trial's stored attributes, the search's results.tsv).
- the agent's judge decides ``keep``, ``discard``, ``close``, ``repeat`` or ``crash`` (results.tsv's ``decision``,
  as in autoresearch); a judge's ``reason`` is the verdict's justification, whatever the decision, not a failure
  text.

``EVAL_BYTES`` is the one default for how many validation bytes a bits-per-byte figure is scored on, so
figures from ``train``, ``search``, ``distill``, ``compress`` and the agent are comparable. It lives here,
not beside ``evaluate_bpb``, because the command lines read it before torch is imported.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import UserError, describe_validation_error
from sandbox.safe_files import UnsafeFile, read_regular

# 256 KiB of validation text: the harness's long-standing default. Half of it (the agent's old default) made
# two seeds of one configuration differ more, and the judge's noise margin is measured on these figures;
# scoring 256 KiB costs seconds on a CPU, small beside any training budget.
EVAL_BYTES = 262_144

METRICS_FILE = "metrics.json"
LOG_FILE = "log.txt"
MAX_METRICS_BYTES = 2**20  # a flat file of a few hundred keys is a few KiB
MAX_KEYS = 1_000
MAX_STRING_CHARS = 4_096  # room for a path (PATH_MAX) or a one-line failure reason, not for a dump
MAX_INT = 2**63 - 1  # what every JSON reader (and SQLite, pandas) holds exactly enough
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")

Status = Literal["ok", "crashed", "diverged", "capped", "timeout", "interrupted"]
#: statuses of earlier versions -> today's word (an old run folder or search storage still reads)
OLD_STATUS: dict[str, Status] = {"failed": "crashed"}
Kind = Literal["train", "search", "distill", "compress", "eval"]
Number = Annotated[float, Field(allow_inf_nan=False, ge=0)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]


class RunFileError(UserError):
    """A run file that cannot be read or written as the contract says; the message is one line."""


class MissingRunFile(RunFileError):
    """The run left no ``metrics.json`` (it crashed, timed out or was killed before the end)."""


class RunMetrics(BaseModel):
    """One run's ``metrics.json``. Typed keys are the ones the judge, report and search read; the rest pass
    through as flat extras (``model_extra``)."""

    model_config = ConfigDict(
        extra="allow", strict=True, frozen=True, allow_inf_nan=False, str_max_length=MAX_STRING_CHARS
    )

    status: Status
    fail_reason: str = ""
    kind: Kind | None = None
    val_bpb: Number | None = None
    params: Count | None = None
    size_bytes_int8: Count | None = None
    latency_ms_p50: Number | None = None
    wall_s: Number | None = None
    eval_bytes: Annotated[int, Field(gt=0, le=MAX_INT)] | None = None  # the cap asked for; val_bytes is what was scored
    tokens_trained: Count | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_status(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("status"), str) and data["status"] in OLD_STATUS:
            return {**data, "status": OLD_STATUS[data["status"]]}
        return data

    @model_validator(mode="after")
    def _flat_extras(self) -> RunMetrics:
        extra = self.model_extra or {}
        if len(extra) + len(type(self).model_fields) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} keys")
        for key, value in extra.items():
            if not KEY.fullmatch(key):
                raise ValueError(f"key {key[:40]!r}{'...' if len(key) > 40 else ''} is not a short identifier")
            problem = _flat_problem(value)
            if problem:
                raise ValueError(f"{key}: {problem}")
        return self

    @classmethod
    def failure(cls, status: Status, fail_reason: str) -> RunMetrics:
        """The metrics of a run that produced none of its own (the reason cut to fit the contract)."""
        return cls(status=status, fail_reason=_one_line(fail_reason, MAX_STRING_CHARS))

    def flat(self) -> dict[str, Any]:
        """The keys the run wrote, as a plain dict (what the agent keeps in its state). A typed key written as
        null reads as absent, so ``metrics.get("latency_ms_p50", 0)`` is always a number."""
        typed = type(self).model_fields
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if not (k in typed and v is None)}


def outcome_fail_reason(outcome: object) -> str:
    """The failure text of a trainer's outcome (``nas.train.TrainOutcome``). The trainer is editable model code, and a
    run's workspace or a model's carried code may hold a copy from before the field was named ``fail_reason``: its
    ``reason`` is read the same."""
    text = getattr(outcome, "fail_reason", None)
    return str(text if text is not None else getattr(outcome, "reason", ""))


def current_status(word: str) -> str:
    """A status as today's word (an old one mapped, see :data:`OLD_STATUS`; any other as it is)."""
    return OLD_STATUS.get(word, word)


def _flat_problem(value: Any) -> str:
    """Why ``value`` may not stand in a flat metrics file ('' if it may)."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "" if abs(value) <= MAX_INT else "integer out of range"
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, str):
        return (
            "" if len(value) <= MAX_STRING_CHARS else f"string of {len(value)} characters (at most {MAX_STRING_CHARS})"
        )
    return f"a {type(value).__name__} is not flat (numbers, booleans, short strings or null only)"


def _plain(value: Any) -> Any:
    """A NumPy / torch scalar as the Python number it holds (writers compute with them); anything else as is."""
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return value.item()
    return value


def _validate(metrics: RunMetrics | Mapping[str, Any], source: str, plain: bool = False) -> RunMetrics:
    if isinstance(metrics, RunMetrics):
        return metrics
    try:
        return RunMetrics.model_validate({k: _plain(v) for k, v in metrics.items()} if plain else dict(metrics))
    except ValidationError as err:
        raise RunFileError(_one_line(describe_validation_error(err, source))) from None


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_metrics(out_dir: str | Path, metrics: RunMetrics | Mapping[str, Any]) -> RunMetrics:
    """Validate ``metrics`` and write ``out_dir/metrics.json`` atomically (the single writer).

    The file appears whole or not at all (tmp file, fsync, rename, fsync of the folder), so its presence means
    the run finished. Returns the validated metrics; a value outside the contract is a :class:`RunFileError`.
    """
    out = Path(out_dir)
    target = out / METRICS_FILE
    valid = _validate(metrics, str(target), plain=True)
    data = json.dumps(valid.flat(), indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    if len(data) > MAX_METRICS_BYTES:
        raise RunFileError(f"{target}: {len(data)} bytes, more than the {MAX_METRICS_BYTES} a reader accepts")
    fd, tmp = tempfile.mkstemp(prefix=METRICS_FILE + ".", suffix=".tmp", dir=out)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(out)
    return valid


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def read_metrics(path: str | Path) -> RunMetrics:
    """The metrics of a run (the single reader); ``path`` is a ``metrics.json`` or the run folder holding it.

    :class:`MissingRunFile` if there is none; :class:`RunFileError` (one line) for a link, a FIFO or other
    non-regular file, a file over :data:`MAX_METRICS_BYTES`, malformed JSON, or keys outside the contract.
    """
    p = Path(path)
    if p.name != METRICS_FILE:
        p = p / METRICS_FILE
    try:
        data = read_regular(p, MAX_METRICS_BYTES)
    except UnsafeFile as err:
        raise RunFileError(_one_line(str(err))) from None
    if data is None:
        raise MissingRunFile(f"{p} does not exist")
    return parse_metrics(data, str(p))


def parse_metrics(data: bytes | str, source: str = METRICS_FILE) -> RunMetrics:
    """The contents of a ``metrics.json`` that arrived as bytes (e.g. from a remote worker), checked as
    :func:`read_metrics` checks a file; ``source`` names it in the error."""
    if len(data) > MAX_METRICS_BYTES:
        raise RunFileError(f"{source} is {len(data)} bytes, more than the {MAX_METRICS_BYTES} allowed")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RunFileError(_one_line(f"{source} is not JSON ({type(err).__name__}: {err})")) from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{source} holds a JSON {type(obj).__name__}, not an object")
    return _validate(obj, source)


def append_log(out_dir: str | Path, line: str) -> None:
    """Append one time-stamped line to ``out_dir/log.txt`` (created if missing; a planted link is not followed)."""
    stamped = time.strftime("%Y-%m-%d %H:%M:%S ") + line.rstrip("\n") + "\n"
    fd = os.open(Path(out_dir) / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, stamped.encode("utf-8", "replace"))
    finally:
        os.close(fd)
