"""The console's reading side of a runs folder: typed views of each run and experiment, from the files only.

Invariants:
- READ ONLY. Nothing here writes under the runs folder (the STOP file is written by :func:`request_stop`, the one
  exception, which the console's STOP button calls).
- Ids are checked before any path is built from them (:func:`run_dir`), and the resolved folder must sit directly
  in the runs folder, so ``../``, absolute paths, links out and look-alike unicode never reach the file system.
- A run folder being written, from an older version, or with files missing still reads: what is missing is listed
  in ``problems`` (shown on the page), never raised. The agent appends to its files in single writes, so a torn
  line is a write in progress and is left out (see :mod:`harness.run_folder_layout`).

A run's state is read from its files alone: ``finished`` when summary.json exists; otherwise ``running`` while
something in it changed in the last :data:`ACTIVE_S` seconds (an experiment writes its worker log as it trains, the
agent its checkpoint after every step), else ``crashed`` (killed, or the machine went down). Per-experiment LLM
cost is attributed by time: planner and editor calls to the next experiment to finish, judge calls to the one just
finished.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from harness import run_folder_layout as layout
from sandbox.safe_files import UnsafeFile, read_json_object, read_regular_head
from serve.ids import valid_id

EXPERIMENT_ID = re.compile(r"e[0-9]{3,6}")
ACTIVE_S = 300.0
MAX_JOURNAL_BYTES = 16 * 2**20  # journal.md read at most (it grows by a few kB an experiment)
RunStateName = Literal["running", "stopping", "finished", "crashed"]


class UnknownRun(LookupError):
    """No run (or experiment) by that id, or an id that is not a valid name: the page answers 404."""


def run_dir(runs_dir: Path, run_id: str) -> Path:
    """The folder of ``run_id``, only after the id is checked and the folder found directly inside ``runs_dir``."""
    if not valid_id(run_id):
        raise UnknownRun(run_id)
    folder = runs_dir / run_id
    try:
        inside = folder.resolve(strict=True).parent == runs_dir.resolve(strict=True)
    except OSError:
        raise UnknownRun(run_id) from None
    if not inside or not folder.is_dir():
        raise UnknownRun(run_id)
    return folder


class RunFile(BaseModel):
    """The fields of run.json the console shows; any version's extra fields are ignored, old spellings read."""

    model_config = ConfigDict(extra="ignore")

    run_id: str = ""
    goal: str = "(no goal recorded)"
    budget: str | None = None
    budget_s: float | None = None  # run.json of earlier versions
    experiment_budget: str | None = None
    max_cost_usd: float | None = None
    max_experiments: int | None = None
    editors: tuple[str, ...] = ("builtin",)

    @property
    def budget_text(self) -> str:
        if self.budget:
            return self.budget
        return f"{self.budget_s:g}s" if self.budget_s is not None else "?"


@dataclass
class Experiment:
    """One row of the experiments table: results.tsv joined with the experiment's metrics.json and journal."""

    id: str
    kind: str
    decision: str
    commit: str
    val_bpb: float | None
    delta_bpb: float | None
    noise_bpb: float | None
    tokens: int | None
    int8_mb: float | None
    ms_per_token: float | None
    editor: str
    cost_usd: float
    reason: str
    rationale: str
    arch: str
    planner: str
    finished_at: float | None  # unix seconds the experiment's metrics were written


@dataclass
class Run:
    """A run as the console shows it; ``problems`` says what could not be read and why."""

    id: str
    folder: Path
    settings: RunFile
    state: RunStateName
    started_at: float
    used_s: float
    experiments: list[Experiment]
    llm_cost_usd: float
    llm_calls: int
    best_val_bpb: float | None
    stop_requested: bool
    problems: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.state in ("running", "stopping")


@dataclass(frozen=True)
class LLMCall:
    role: str
    cost_usd: float
    at: float


def list_runs(runs_dir: Path | None) -> list[Run]:
    """Every valid run folder, newest first; a folder that cannot be read at all is left out."""
    if runs_dir is None or not runs_dir.is_dir():
        return []
    runs = []
    for child in runs_dir.iterdir():
        if not valid_id(child.name) or not (child / layout.RUN_JSON).exists() and not (child / "workspace").is_dir():
            continue
        try:
            runs.append(read_run(runs_dir, child.name))
        except (UnknownRun, OSError):
            continue
    return sorted(runs, key=lambda r: r.started_at, reverse=True)


def read_run(runs_dir: Path, run_id: str, now: float | None = None) -> Run:
    folder = run_dir(runs_dir, run_id)
    problems: list[str] = []
    settings = _read_run_file(folder, problems)
    workspace = folder / layout.WORKSPACE
    results = layout.read_results(workspace / layout.RESULTS_TSV)
    if not (workspace / layout.RESULTS_TSV).is_file():
        problems.append(f"{layout.WORKSPACE}/{layout.RESULTS_TSV} does not exist yet: no experiment has finished")
    if results.torn:
        problems.append(f"{results.torn} row(s) of {layout.RESULTS_TSV} are being written (left out until complete)")
    if results.missing_columns:
        problems.append(
            f"{layout.RESULTS_TSV} is from an older version: no {', '.join(results.missing_columns)} column(s)"
        )
    journal = _journal_sections(workspace / layout.JOURNAL)
    calls = _read_calls(folder / layout.LLM_CALLS)
    experiments = [_experiment(row, workspace, journal) for row in results.rows]
    _attribute_costs(experiments, calls)
    summary = _read_json(folder / layout.SUMMARY_JSON, problems, required=False)
    run_json = folder / layout.RUN_JSON
    started = _mtime(run_json) or _mtime(folder) or 0.0
    now = time.time() if now is None else now
    stop = (folder / layout.STOP_FILE).exists()
    if summary is not None:
        state: RunStateName = "finished"
        used = float(summary.get("elapsed_s") or 0.0) or (_newest_write(folder) - started)
    else:
        last = _newest_write(folder)
        state = ("stopping" if stop else "running") if now - last < ACTIVE_S else "crashed"
        used = (now if state != "crashed" else last) - started
    kept = [e.val_bpb for e in experiments if e.decision == "keep" and e.val_bpb is not None]
    best = summary.get("best_val_bpb") if summary else None
    return Run(
        id=run_id,
        folder=folder,
        settings=settings,
        state=state,
        started_at=started,
        used_s=max(used, 0.0),
        experiments=experiments,
        llm_cost_usd=sum(c.cost_usd for c in calls),
        llm_calls=len(calls),
        best_val_bpb=best if isinstance(best, (int, float)) else (min(kept) if kept else None),
        stop_requested=stop,
        problems=problems,
    )


def request_stop(runs_dir: Path, run_id: str) -> Path:
    """Write RUN/STOP, the file ``autonas run`` checks before each experiment; the console's one write."""
    path = run_dir(runs_dir, run_id) / layout.STOP_FILE
    if not path.exists():
        path.write_text(f"stop requested from the console at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    return path


def fingerprint(folder: Path) -> tuple[float, ...]:
    """Changes whenever the console's view of the run could: the files it reads, by modification time and size."""
    ws = folder / layout.WORKSPACE
    out: list[float] = []
    for path in (
        ws / layout.RESULTS_TSV,
        ws / layout.JOURNAL,
        folder / layout.LLM_CALLS,
        folder / layout.SUMMARY_JSON,
        folder / layout.STOP_FILE,
    ):
        try:
            st = path.stat()
            out += [st.st_mtime, float(st.st_size)]
        except OSError:
            out += [0.0, -1.0]
    return tuple(out)


# ----------------------------------------------------------------------------------------------------- files


def _read_run_file(folder: Path, problems: list[str]) -> RunFile:
    data = _read_json(folder / layout.RUN_JSON, problems, required=True)
    if data is None:
        return RunFile(run_id=folder.name)
    try:
        return RunFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        problems.append(f"{layout.RUN_JSON} has an unexpected {where or 'field'}: {first.get('msg')}")
        return RunFile(run_id=folder.name)


def _read_json(path: Path, problems: list[str], required: bool) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        if required:
            problems.append(f"{path.name} is missing: the run's settings are unknown")
        return None
    except (OSError, ValueError) as err:
        problems.append(f"{path.name} cannot be read ({type(err).__name__}): it may be being written")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return data


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _newest_write(folder: Path) -> float:
    """The latest modification in the run's top level, its workspace files and its newest experiment's folder."""
    times = [_mtime(folder) or 0.0]
    for base in (folder, folder / layout.WORKSPACE):
        try:
            times += [t for p in base.iterdir() if (t := _mtime(p)) is not None]
        except OSError:
            continue
    exp_root = folder / layout.WORKSPACE / layout.EXPERIMENT_RUNS
    try:
        newest = max(exp_root.iterdir(), key=lambda p: p.name, default=None)
        if newest is not None:
            times += [t for p in newest.iterdir() if (t := _mtime(p)) is not None]
    except OSError:
        pass
    return max(times)


def _read_calls(path: Path) -> list[LLMCall]:
    if not path.is_file():
        return []
    calls = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line torn by a write in progress
        if isinstance(data, dict):
            calls.append(
                LLMCall(str(data.get("role", "")), float(data.get("cost_usd") or 0.0), float(data.get("at") or 0.0))
            )
    return calls


def _journal_sections(path: Path) -> dict[str, str]:
    """journal.md split by its ``## eNNN: ...`` headings.

    The journal lies in the workspace, where an editor may write: only its first :data:`MAX_JOURNAL_BYTES` are read,
    never through a link or from a FIFO, and each section is joined once (adding line by line to a string was
    quadratic: a 1.6 MB journal of short lines took 38 s a page)."""
    try:
        got = read_regular_head(path, MAX_JOURNAL_BYTES)
    except (OSError, UnsafeFile):
        return {}
    if got is None:
        return {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in got[0].decode("utf-8", "replace").splitlines(keepends=True):
        m = re.match(r"## (e[0-9]{3,6}):", line)
        if m:
            current = m.group(1)
            sections[current] = []
        if current is not None:
            sections[current].append(line)
    return {exp: "".join(lines) for exp, lines in sections.items()}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def editor_of(journal: str) -> str:
    """The editor named on the journal's last ``Code change`` attempt line; ``builtin`` for a configuration-only
    plan."""
    _, sep, after = journal.partition("Code change:")
    if not sep:
        return "builtin"
    attempts = re.findall(r"^- ([A-Za-z0-9_.-]+) ", after, re.M)
    return attempts[-1] if attempts else "builtin"


def _experiment(row: dict[str, str], workspace: Path, journal: dict[str, str]) -> Experiment:
    exp_id = row.get("experiment", "")
    metrics_path = workspace / layout.EXPERIMENT_RUNS / exp_id / layout.METRICS_JSON
    metrics: dict[str, Any] = {}
    if valid_id(exp_id, EXPERIMENT_ID):
        try:  # written by edited code: never through a link, never a FIFO (it would hang every page of the run)
            metrics = read_json_object(metrics_path) or {}
        except (OSError, UnsafeFile):
            metrics = {}
    size = _number(row.get("size_bytes_int8"))
    tokens = metrics.get("tokens_trained")
    text = journal.get(exp_id, "")
    editor_cost = sum(float(c) for c in re.findall(r", \$([0-9]+\.[0-9]+)$", text.partition("Code change:")[2], re.M))
    return Experiment(
        id=exp_id,
        kind=row.get("kind", ""),
        decision=row.get("decision", ""),
        commit=row.get("commit", ""),
        val_bpb=_number(row.get("val_bpb")),
        delta_bpb=_number(row.get("delta_bpb")),
        noise_bpb=_number(row.get("noise_bpb")),
        tokens=tokens if isinstance(tokens, int) else None,
        int8_mb=size / 1e6 if size is not None else None,
        ms_per_token=_number(row.get("latency_ms_p50")),
        editor=editor_of(text),
        cost_usd=editor_cost,
        reason=row.get("reason", ""),
        rationale=row.get("rationale", ""),
        arch=row.get("arch", ""),
        planner=row.get("planner", ""),
        finished_at=_mtime(metrics_path) or _mtime(metrics_path.parent),
    )


def _attribute_costs(experiments: list[Experiment], calls: list[LLMCall]) -> None:
    """Add each LLM call's cost to an experiment: a judge call to the last one finished before it, a planner or
    editor call to the first one finished after it (editor costs the journal already counted are skipped)."""
    timed = [(e.finished_at, i) for i, e in enumerate(experiments) if e.finished_at is not None]
    timed.sort()
    times = [t for t, _ in timed]
    for call in calls:
        if call.role == "editor" or not call.cost_usd or not timed:
            continue
        if call.role == "judge":
            k = bisect.bisect_right(times, call.at) - 1
        else:
            k = bisect.bisect_left(times, call.at)
        if 0 <= k < len(timed):
            experiments[timed[k][1]].cost_usd += call.cost_usd
