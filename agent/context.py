"""Compact text views of a run for LLM prompts: the experiments table, the incumbent, the latest front.

Kept short on purpose (a long run must not grow the prompt without bound): the table shows the last
``max_rows`` experiments plus the incumbent's row if it scrolled out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.goal import Goal
from agent.plans import DistillPlan, SearchPlan, TrainPlan
from agent.state import HistoryEntry


def limits_text(goal: Goal) -> str:
    parts = []
    if goal.max_mb is not None:
        parts.append(f"int8 size <= {goal.max_mb:g} MB")
    if goal.max_latency_ms is not None:
        parts.append(f"decode latency p50 <= {goal.max_latency_ms:g} ms per token")
    if goal.max_params is not None:
        parts.append(f"<= {goal.max_params:,} parameters")
    return ", ".join(parts) or "none stated"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _megabytes(size: Any) -> float | None:
    """``size_bytes_int8`` in MB, or None when the metric is missing or not a number (old or failed runs)."""
    return size / 1e6 if isinstance(size, (int, float)) else None


def history_table(history: list[HistoryEntry], incumbent: HistoryEntry | None, max_rows: int = 30) -> str:
    if not history:
        return "(none yet)"
    rows = history[-max_rows:]
    if incumbent and all(r.id != incumbent.id for r in rows):
        rows = [incumbent] + rows
    lines = [
        "| id | kind | decision | val_bpb | int8 MB | latency ms | seed | what | judge |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in rows:
        m = h.metrics
        lines.append(
            f"| {h.id} | {h.plan.kind} | {h.decision} | {_num(h.val_bpb, '.4f')} | "
            f"{_num(_megabytes(m.get('size_bytes_int8')), '.3f')} | {_num(m.get('latency_ms_p50'), '.2f')} | "
            f"{getattr(h.plan.config, 'seed', '-')} | {h.plan.summary()} | {h.reason[:90]} |"
        )
    if len(history) > max_rows:
        lines.insert(0, f"({len(history) - max_rows} older experiments not shown)")
    return "\n".join(lines)


def incumbent_text(incumbent: HistoryEntry | None) -> str:
    if not incumbent:
        return "none yet (no training result kept)"
    # only a model is ever the incumbent
    assert isinstance(incumbent.plan, (TrainPlan, DistillPlan)), incumbent.plan.kind
    m = incumbent.metrics
    config = incumbent.plan.config.model_dump()
    arch = json.dumps(config["arch"], sort_keys=True)
    return (
        f"{incumbent.id}: val_bpb {_num(incumbent.val_bpb, '.4f')}, "
        f"int8 {_num(_megabytes(m.get('size_bytes_int8')), '.3f')} MB, "
        f"latency {_num(m.get('latency_ms_p50'), '.2f')} ms\n"
        f"arch: {arch}\ntraining: " + json.dumps({k: v for k, v in config.items() if k != "arch"}, sort_keys=True)
    )


def front_text(history: list[HistoryEntry], max_members: int = 8) -> str:
    searches = [h for h in history if isinstance(h.plan, SearchPlan) and h.run_dir]
    for h in reversed(searches):
        path = Path(h.run_dir or "") / "pareto.json"
        if not path.is_file():
            continue
        front = sorted(json.loads(path.read_text()).get("front", []), key=lambda m: m["objectives"]["bpb"])[
            :max_members
        ]
        lines = [f"from {h.id} (short training, so bpb is higher than a full run would give):"]
        for m in front:
            objs = ", ".join(f"{k} {v:.4g}" for k, v in m["objectives"].items())
            lines.append(f"- {objs}; arch {json.dumps(m['arch'], sort_keys=True)}")
        return "\n".join(lines)
    return "(no search run yet)"


def space_text(space: Any) -> str:
    return "\n".join(f"- {k}: {', '.join(str(v) for v in vals)}" for k, vals in space.model_dump().items())


def seconds_text(s: float) -> str:
    s = max(0.0, s)
    return f"{s / 3600:.1f}h" if s >= 5400 else (f"{s / 60:.0f}m" if s >= 120 else f"{s:.0f}s")
