"""The layout of a run folder, as a contract between the agent that writes it and the readers that only read it
(``autonas status``, the web console of ``autonas serve``, old run folders).

The agent owns writing; this module holds the names and the row shape both sides agree on, so the console (which
may not import the agent) and the agent cannot drift apart. Names here are added to, never renamed: a run folder of
an older version must still read. :func:`read_results` reads ``results.tsv`` while the agent may be appending to
it: a row torn mid-write (fewer fields than the header, or no line end yet) is left out and counted, never guessed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

RUN_JSON = "run.json"  # RunSettings of the run
WORKSPACE = "workspace"  # the run's git workspace
RESULTS_TSV = "results.tsv"  # in the workspace: one row per finished experiment (ignored by git)
JOURNAL = "journal.md"  # in the workspace: the agent's notes per experiment (ignored by git)
EXPERIMENT_RUNS = "runs"  # in the workspace: runs/<experiment id>/ holds the worker's files (metrics.json, logs)
EDIT_LOGS = "edit"  # in an experiment's folder: the code editors' transcripts and patch
METRICS_JSON = "metrics.json"  # in an experiment's folder
SUMMARY_JSON = "summary.json"  # written when the run finishes
STOP_FILE = "STOP"  # its presence tells ``autonas run`` to stop before the next experiment
LLM_CALLS = "llm_calls.jsonl"  # every LLM call with its cost, one JSON line each
REPORT_MD = "report.md"
BEST_DIR = "best"  # the kept model, copied when the run finishes
DISCARDED_REF_PREFIX = "refs/autonas/discarded/"  # + experiment id: the commit of a discarded experiment's diff
COMMAND_JSON = "command.json"  # in an experiment's folder: how its worker was started (``python_args``, ...)
#: what a stored worker command may run: ``python -m <one of these> ...`` with an ``--out``. ``command.json`` lies
#: in the workspace, which later editors can write, so whoever shows or runs a stored command checks this shape
#: first: a command of any other shape is not one the agent started.
WORKER_PACKAGES = ("nas", "distill", "kernels")

RESULT_COLUMNS = [
    "experiment",
    "commit",
    "kind",
    "decision",
    "val_bpb",
    "size_bytes_int8",
    "latency_ms_p50",
    "params",
    "delta_bpb",
    "noise_bpb",
    "seed",
    "arch",
    "rationale",
    "reason",
    "planner",
    "noise_source",
]
#: metrics.json key -> commit trailer of a kept experiment
METRIC_TRAILERS = (
    ("val_bpb", "val-bpb"),
    ("size_bytes_int8", "size-int8-bytes"),
    ("latency_ms_p50", "latency-ms-p50"),
    ("latency_ms_spread", "latency-ms-spread"),
    ("params", "params"),
    ("humaneval_pass_at_1", "humaneval-pass-at-1"),
    ("size_bytes_on_disk_int8", "size-on-disk-int8-bytes"),
    ("val_bpb_change_pct", "bpb-change-pct"),
)


@dataclass(frozen=True)
class ResultsRead:
    """The complete rows of a results.tsv (column -> text, as written), and how many torn rows were left out."""

    rows: list[dict[str, str]] = field(default_factory=list)
    torn: int = 0
    missing_columns: tuple[str, ...] = ()  # columns of this version the file's header lacks (an older run)


def parse_results(text: str) -> ResultsRead:
    """Rows of a results.tsv text. Only rows that end in a newline and carry every header field count: the agent
    appends a row in one write, so anything else is a write in progress (or cut by a kill)."""
    if not text.strip():
        return ResultsRead()
    complete, tail = (text, "") if text.endswith("\n") else text.rsplit("\n", 1) if "\n" in text else ("", text)
    reader = csv.reader(io.StringIO(complete), delimiter="\t")
    header = next(reader, None)
    if header is None:  # not even the header line is finished
        return ResultsRead(torn=0)
    rows, torn = [], 1 if tail.strip() else 0
    for values in reader:
        if len(values) != len(header):
            torn += 1
            continue
        rows.append(dict(zip(header, values, strict=True)))
    missing = tuple(c for c in RESULT_COLUMNS if c not in header)
    return ResultsRead(rows, torn, missing)


def read_results(path: Path) -> ResultsRead:
    """:func:`parse_results` of the file, or nothing when it does not exist yet; bytes that are not UTF-8 (a
    multi-byte character cut by a write in progress) are replaced rather than refused."""
    if not path.is_file():
        return ResultsRead()
    return parse_results(path.read_bytes().decode("utf-8", "replace"))


def is_worker_invocation(python_args: object) -> bool:
    """Whether ``python_args`` (the interpreter's arguments of a stored command) start one of our workers the way
    the agent does: ``-m <worker package> ... --out DIR`` with one ``--out``, every argument a string without NUL."""
    return (
        isinstance(python_args, list)
        and all(isinstance(a, str) and "\x00" not in a for a in python_args)
        and len(python_args) >= 3
        and python_args[0] == "-m"
        and python_args[1] in WORKER_PACKAGES
        and "--out" in python_args[2:-1]
        and python_args.count("--out") == 1  # the one a re-run replaces: a second (or --out=) would win over it
        and not any(a.startswith("--out=") for a in python_args)
    )
