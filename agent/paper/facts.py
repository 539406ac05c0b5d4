"""What a run folder says, read once and typed: the only source of every number the paper shows.

Read-only: ``run.json`` (what was asked), ``workspace/results.tsv`` (one row per experiment, the contract of
:mod:`agent.results`), each experiment's ``workspace/runs/<id>/metrics.json``, ``summary.json`` (present once the
run has finished) and, for a kept experiment, its commit's trailers (seed, tokens, code hash, corpus fingerprint).
A results file that is being written may end in half a line: that line is left out. A folder from a version
without ``run.json`` or ``results.tsv`` is refused in one line naming the missing file.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.settings import RunSettings
from harness.errors import UserError, describe_validation_error
from harness.run_folder_layout import read_results
from nas.space import GENES, get_space
from sandbox.workspace import run_git

REQUIRED_COLUMNS = ("experiment", "kind", "decision")
MODEL_KINDS = ("train", "distill")


class ExperimentFacts(BaseModel):
    """One row of results.tsv, with its metrics.json and (when kept) its commit's trailers."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    decision: str
    val_bpb: float | None = None
    delta_bpb: float | None = None
    noise_bpb: float | None = None
    size_bytes_int8: int | None = None
    latency_ms_p50: float | None = None
    params: int | None = None
    seed: int | None = None
    arch: str = ""
    commit: str = ""
    rationale: str = ""
    reason: str = ""
    noise_source: str = ""
    tokens_trained: int | None = None
    metrics: dict[str, Any] = {}
    trailers: dict[str, str] = {}

    @property
    def is_model(self) -> bool:
        return self.kind in MODEL_KINDS and self.val_bpb is not None

    @property
    def kept(self) -> bool:
        return self.decision == "keep"


class RunFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    goal: str
    finished: bool
    settings: dict[str, Any]
    experiments: list[ExperimentFacts]
    summary: dict[str, Any]
    space_name: str
    space_genes: dict[str, list[Any]]
    space_size: int
    hardware: str
    workspace_head: str = ""

    @property
    def kept(self) -> list[ExperimentFacts]:
        return [e for e in self.experiments if e.kept]

    @property
    def best(self) -> ExperimentFacts | None:
        models = [e for e in self.kept if e.is_model]
        return min(models, key=lambda e: e.val_bpb or math.inf) if models else None


def _number(text: str | None, kind: type) -> Any:
    if text is None or text.strip() == "":
        return None
    try:
        value = kind(float(text)) if kind is int else kind(text)
    except ValueError:
        return None
    return value if not (isinstance(value, float) and not math.isfinite(value)) else None


def _rows(path: Path) -> list[dict[str, str]]:
    """results.tsv's complete rows (:func:`harness.run_folder_layout.read_results`: a row being written is left
    out); a file without the columns the paper needs is from another version."""
    read = read_results(path)
    missing = [c for c in REQUIRED_COLUMNS if c in read.missing_columns]
    if missing and (read.rows or path.read_text(errors="replace").strip()):
        raise UserError(f"{path} has no {', '.join(missing)} column: a results file from another version")
    return read.rows


def _trailers(workspace: Path, commit: str) -> dict[str, str]:
    """``Key: value`` trailers of a commit in the workspace (empty when git cannot read it)."""
    if not commit:
        return {}
    try:
        body = run_git(workspace, "log", "-1", "--format=%(trailers:only,unfold)", commit).decode("utf-8", "replace")
    except (RuntimeError, OSError):  # a missing commit or a damaged repository: the row counts, without trailers
        return {}
    out = {}
    for line in body.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _metrics(workspace: Path, exp_id: str) -> dict[str, Any]:
    path = workspace / "runs" / exp_id / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _experiment(row: dict[str, str], workspace: Path) -> ExperimentFacts:
    metrics = _metrics(workspace, row["experiment"])
    commit = row.get("commit", "") or ""
    tokens = metrics.get("tokens_trained")
    return ExperimentFacts(
        id=row["experiment"],
        kind=row.get("kind", ""),
        decision=row.get("decision", ""),
        val_bpb=_number(row.get("val_bpb"), float),
        delta_bpb=_number(row.get("delta_bpb"), float),
        noise_bpb=_number(row.get("noise_bpb"), float),
        size_bytes_int8=_number(row.get("size_bytes_int8"), int),
        latency_ms_p50=_number(row.get("latency_ms_p50"), float),
        params=_number(row.get("params"), int),
        seed=_number(row.get("seed"), int),
        arch=row.get("arch", "") or "",
        commit=commit,
        rationale=row.get("rationale", "") or "",
        reason=row.get("reason", "") or "",
        noise_source=row.get("noise_source", "") or "",
        tokens_trained=tokens if isinstance(tokens, int) else None,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        trailers=_trailers(workspace, commit),
    )


def read_run(run_dir: Path) -> RunFacts:
    """The facts of ``run_dir``; one clear line when it is not a run folder this version can read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    settings_file, results = run_dir / "run.json", run_dir / "workspace" / "results.tsv"
    for needed in (settings_file, results):
        if not needed.is_file():
            raise UserError(f"{run_dir} has no {needed.relative_to(run_dir)}: not a run folder of this version")
    try:
        settings = RunSettings.model_validate_json(settings_file.read_text())
    except (ValidationError, UserError) as err:
        detail = describe_validation_error(err) if isinstance(err, ValidationError) else str(err)
        raise UserError(f"{settings_file} does not read ({detail[:200]})") from None
    workspace = run_dir / "workspace"
    experiments = [_experiment(r, workspace) for r in _rows(results) if r.get("experiment")]
    summary_file = run_dir / "summary.json"
    summary: dict[str, Any] = {}
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except ValueError:
            summary = {}
    space = get_space("default")
    genes = {g: list(getattr(space, g)) for g in GENES}
    size = math.prod(len(v) for v in genes.values())
    devices = sorted({str(e.metrics.get("device")) for e in experiments if e.metrics.get("device")})
    hardware = f"{', '.join(devices) or 'cpu'} ({platform.machine()}, {platform.system()})"
    try:
        head = run_git(workspace, "rev-parse", "--short", "HEAD").decode().strip()
    except (RuntimeError, OSError):  # no commits yet
        head = ""
    return RunFacts(
        run_id=settings.run_id,
        goal=settings.goal,
        finished=summary_file.is_file(),
        settings=json.loads(settings.model_dump_json()),
        experiments=experiments,
        summary=summary,
        space_name="default",
        space_genes=genes,
        space_size=size,
        hardware=hardware,
        workspace_head=head,
    )
