"""What a finished experiment leaves in the workspace besides its commit: its row in ``results.tsv`` and the
trailers of its commit. The column names and trailer keys are contracts (read by ``autonas status``, ``autonas
reproduce``, tests and old run folders): add to them, never rename."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from agent.judge import Verdict
from agent.plans import AnyPlan, DistillPlan, TrainPlan
from agent.state import HistoryEntry
from harness.model_code import read_code_record
from harness.run_folder_layout import METRIC_TRAILERS, RESULT_COLUMNS  # shared with the readers (console)


def metric_trailers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {name: metrics[key] for key, name in METRIC_TRAILERS if key in metrics}


def provenance_trailers(
    plan: AnyPlan, run_dir: str | None, metrics: dict[str, Any], corpus_fingerprint: str
) -> dict[str, Any]:
    """The trailers that let ``autonas reproduce`` re-make a kept model: seed, tokens trained, code hash, corpus."""
    assert isinstance(plan, (TrainPlan, DistillPlan)), plan.kind  # only a model plan is committed with provenance
    out: dict[str, Any] = {"seed": plan.config.seed}
    if isinstance(metrics.get("tokens_trained"), int):
        out["tokens"] = metrics["tokens_trained"]
    record = read_code_record(Path(run_dir)) if run_dir else None
    if record is not None:
        out["code-hash"] = record.hash
    out["corpus"] = corpus_fingerprint
    return out


def append_result(path: Path, entry: HistoryEntry, verdict: Verdict) -> None:
    """One row per experiment; idempotent (a record node re-run after a kill finds its row and writes nothing)."""
    if path.exists():
        with open(path) as fh:
            if any(row.get("experiment") == entry.id for row in csv.DictReader(fh, delimiter="\t")):
                return
    m, plan = entry.metrics, entry.plan
    arch = getattr(plan.config, "arch", None)
    row = {
        "experiment": entry.id,
        "commit": entry.commit[:10],
        "kind": plan.kind,
        "decision": entry.decision,
        "val_bpb": m.get("val_bpb", ""),
        "size_bytes_int8": m.get("size_bytes_int8", ""),
        "latency_ms_p50": m.get("latency_ms_p50", ""),
        "params": m.get("params", ""),
        "delta_bpb": verdict.delta,
        "noise_bpb": entry.noise_bpb,
        "noise_source": entry.noise_source,
        "seed": getattr(plan.config, "seed", ""),
        "rationale": plan.rationale,
        "reason": entry.reason,
        "arch": arch.describe() if arch else "",
        "planner": entry.planner,
    }
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, delimiter="\t")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
