"""Optuna storage for a search: a journal file in the run folder by default (several local processes
may share it), or any SQLAlchemy URL (PostgreSQL, MySQL, SQLite) for searches spread over machines.
``optuna-dashboard`` opens either: ``optuna-dashboard runs/search/study.journal`` or the URL.

The journal file is appended without ``fsync``: a search writes some twenty journal lines per candidate (its
parameters, architecture, proxies, outcome), and one fsync per line cost 8 ms on this project's disk: 128 s of a
200-trial search's 828 s in the driver (8 s without). A killed search (SIGKILL, the OOM killer, Ctrl-C) loses
nothing by it: its writes are in the kernel's page cache, which outlives the process; only a crash of the machine
itself can lose the last lines, and then the finished trial folders (``metrics.json``) hold the results that a
resumed search reads back. Searches that must survive a power loss use a database URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from harness.errors import UserError

RDB_SCHEMES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")


class UnsyncedJournalFile(JournalFileBackend):
    """Optuna's journal file, appended under the same lock and in the same format, without ``fsync`` (see the module
    docstring): other processes sharing the file read it exactly as before."""

    def __init__(self, file_path: str) -> None:
        self._append_lock = JournalFileSymlinkLock(file_path)  # the parent's default lock, kept to take it here
        super().__init__(file_path, lock_obj=self._append_lock)
        self._append_path = file_path

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._append_lock.acquire()
        try:
            with open(self._append_path, "ab") as fh:
                fh.write(text.encode("utf-8"))  # a reader stops at a line not yet complete, as with Optuna's writer
        finally:
            self._append_lock.release()


def describe_storage(url: str | None, out: Path) -> str:
    """Where the study lives, for messages: the URL, or the default journal file."""
    return url or str(out / "study.journal")


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """The storage named by ``url`` (default: ``out/study.journal``); any problem is one clear line."""
    if url is None or url.split(":", 1)[0].split("+", 1)[0] not in RDB_SCHEMES:
        path = Path(url) if url else out / "study.journal"
        if path.exists() and not path.is_file():
            raise UserError(f"study storage {path} is not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(UnsyncedJournalFile(str(path)))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as err:
            raise UserError(
                f"study storage {path} is corrupted or not an Optuna journal ({type(err).__name__}: {str(err)[:150]}); "
                "move it away to start a new study"
            ) from None
        except OSError as err:
            raise UserError(f"cannot open study storage {path}: {err.strerror or err}") from None
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # sqlalchemy OperationalError, ArgumentError, missing driver ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        safe_url = url.split("@")[-1] if "@" in url else url  # never print a password
        raise UserError(f"cannot open database storage {safe_url!r}: {first[:200]}") from None


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
