"""Optuna storage for a search: a journal file in the run folder by default (several local processes
may share it), or any SQLAlchemy URL (PostgreSQL, MySQL, SQLite) for searches spread over machines.
``optuna-dashboard`` opens either: ``optuna-dashboard runs/search/study.journal`` or the URL."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from harness.errors import UserError

RDB_SCHEMES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")


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
            return JournalStorage(JournalFileBackend(str(path)))
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
