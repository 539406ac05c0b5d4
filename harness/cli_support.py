"""Plumbing every command line of the project shares: the two consoles, the one-line error, and the click group
that turns usage errors into that line.

It lives in ``harness`` (the lowest layer) so that ``autonas`` and the bare workers (``python -m nas|distill|kernels``)
import it without importing any research code. Invariants:

* stdout (:data:`console`) carries a command's result (tables, JSON); stderr (:data:`err_console`) carries
  progress, warnings and errors, so a result can be piped.
* an error a user can cause ends as ``error: <one line>`` on stderr and exit status 2, never a traceback:
  :func:`user_errors` for a command's :class:`UserError` / pydantic ``ValidationError``, :class:`OneLineErrors`
  for click's usage errors (unknown option, a value out of its range, a missing argument).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from harness.errors import UserError, describe_validation_error
from harness.run_files import outcome_fail_reason

err_console = Console(stderr=True)
console = Console()

P = ParamSpec("P")
R = TypeVar("R")


def print_error(message: str) -> None:
    """One line on stderr, whatever the message holds (newlines are joined, markup is not interpreted)."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a :class:`UserError` (or a settings model's ``ValidationError``) as one line and exit 2.

    It decorates the typer command itself: ``functools.wraps`` keeps the signature, so typer reads the options
    from the command's own parameters and nothing re-declares them."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print_error(str(err))
            raise typer.Exit(2) from None
        except ValidationError as err:
            print_error(describe_validation_error(err))
            raise typer.Exit(2) from None

    return wrapper


def field_default(model: type[BaseModel], name: str) -> Any:
    """The default of a settings model's field, so that an option's default is declared once, in the model."""
    return model.model_fields[name].default


# Click's exception classes, from the MRO so that a typer that vendors its own click works as one that does not
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _ClickError(Protocol):
    """What :class:`OneLineErrors` reads of click's exceptions (found by name, so typed as plain exceptions)."""

    exit_code: int

    def format_message(self) -> str: ...


class OneLineErrors(TyperGroup):
    """The top-level command group of every entry point (``autonas``, ``python -m nas|distill|kernels``).

    Click's usage errors (an unknown option, a value that is not a number or out of its range, a missing
    argument) print one line and exit 2, like a :class:`UserError`, instead of a usage panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        extra["windows_expand_args"] = windows_expand_args  # click's own default, passed through unchanged
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        for arg in sys.argv[1:] if args is None else args:
            try:
                str(arg).encode("utf-8")
            except UnicodeEncodeError:  # bytes the locale could not decode: they would end up in JSON files
                print_error(f"argument {ascii(arg)} is not valid UTF-8 text")
                sys.exit(2)
        try:
            rc = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _USAGE_ERROR as err:
            if type(err).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # the help is printed
            ctx = getattr(err, "ctx", None)
            message = cast(_ClickError, err).format_message()
            print_error(message + (f" (see {ctx.command_path} --help)" if ctx is not None else ""))
            sys.exit(2)
        except _CLICK_ERROR as err:
            click_err = cast(_ClickError, err)
            print_error(click_err.format_message())
            sys.exit(click_err.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(130)
        except UserError as err:  # a command without @user_errors
            print_error(str(err))
            sys.exit(2)
        sys.exit(rc if isinstance(rc, int) else 0)


class Outcome(Protocol):
    """What a training run ends with (``nas.train.Outcome`` and the distillation trainer's): a status and why."""

    status: str  # its failure text is read with harness.run_files.outcome_fail_reason
    metrics: dict[str, Any]


def exit_unless_finished(outcome: Outcome, out_dir: Path) -> None:
    """An interrupted run exits 130 (rerun to resume), a capped or failed one 1 with its recorded reason."""
    fail_reason = outcome_fail_reason(outcome)
    if outcome.status == "interrupted":
        err_console.print(f"interrupted: {fail_reason}; run the same command to resume", highlight=False)
        raise typer.Exit(130)
    if outcome.status == "capped":
        err_console.print(
            f"[bold red]stopped early:[/] {fail_reason} (recorded in {out_dir / 'metrics.json'})",
            highlight=False,
        )
        raise typer.Exit(1)
    if outcome.status != "ok":
        err_console.print(
            f"[bold red]trial failed:[/] {fail_reason} (recorded in {out_dir / 'metrics.json'})",
            highlight=False,
        )
        raise typer.Exit(1)


# The metrics.json keys that a training command (``autonas train``, ``autonas distill``) prints when it ends
TRAIN_KEYS = (
    "val_bpb",
    "params",
    "params_non_embedding",
    "size_bytes_int8",
    "steps",
    "tokens_trained",
    "tokens_per_s",
    "latency_ms_p50",
    "latency_ms_prefill_p50",
    "wall_s",
    "peak_mem_mb",
)


def print_metrics(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """The named keys of a metrics.json as a two-column table on stdout (absent keys are left out)."""
    table = Table(title="metrics.json", show_header=False)
    for key in keys:
        if key in metrics:
            v = metrics[key]
            table.add_row(
                key,
                (f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4f}")
                if isinstance(v, float)
                else f"{v:,}"
                if isinstance(v, int)
                else str(v),
            )
    console.print(table)


def progress_bar(label: str) -> Progress:
    """A counted progress bar on stderr (generation, program execution) that stays on screen when done."""
    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=False
    )
