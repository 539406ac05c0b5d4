"""A synthetic run folder laid out as ``autonas run`` writes one (run.json, a git workspace seeded with the model code
and holding kept commits and discarded refs, results.tsv, journal.md, per-experiment metrics.json, an editor
transcript, the code a trained model carries, llm_calls.jsonl), for the console's tests and its render benchmark. The
workspace is made through :class:`sandbox.workspace.Workspace`, the agent's own way, so commits and refs are where
the agent puts them."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from harness import run_folder_layout as layout
from harness.model_code import seed_files, write_code_record
from sandbox.workspace import Workspace


def make_run(
    runs_dir: Path,
    run_id: str,
    n: int,
    secret: str | None = None,
    finished: bool = True,
    goal: str = "find the best Python code model under 2 MB",
    code_editing: bool = True,
) -> Path:
    """A run of ``n`` experiments (every third one kept), e002 with an LLM editor whose transcript shows ``secret``
    and a change to ``nas/model.py``. Every experiment's model carries the code it was built by (``code.json``):
    the workspace's where the run edits code, else the installed code, whose copy the workspace then lacks."""
    folder = runs_dir / run_id
    ws_root = folder / layout.WORKSPACE
    ws = Workspace.create(ws_root, run_id)
    if code_editing:  # as autonas run does: the stock model code, committed before the first experiment
        ws.seed_code(seed_files())
    (folder / layout.RUN_JSON).write_text(
        json.dumps({"run_id": run_id, "goal": goal, "runs_dir": str(runs_dir), "budget": "10m"})
    )
    journal, rows, calls = [], [], []
    start = time.time() - 60 * n
    best = 3.0
    for i in range(1, n + 1):
        exp = f"e{i:03d}"
        keep = i % 3 == 1
        bpb = best - 0.01 if keep else best + 0.02 * (i % 5)
        size = 400_000 + 37_000 * (i % 11)
        (ws_root / "configs").mkdir(exist_ok=True)
        plan = {"experiment": exp, "rationale": f"try width {64 + i}", "code_change": None, "kind": "train"}
        if i == 2:
            plan["code_change"] = "use a gated MLP in nas/model.py"
            (ws_root / "nas").mkdir(exist_ok=True)
            (ws_root / "nas" / "model.py").write_text("def gated_mlp(x):\n    return x * 2\n")
        (ws_root / "configs" / "plan.json").write_text(json.dumps(plan, indent=2))
        (ws_root / "configs" / "train.json").write_text(json.dumps({"d_model": 64 + i}, indent=2))
        commit = ""
        if keep:
            best = bpb
            commit = ws.commit_experiment(f"train d{64 + i}", "why", {"experiment": exp, "val-bpb": bpb})
        else:
            ws.discard(exp, f"train d{64 + i}")
        exp_dir = ws_root / layout.EXPERIMENT_RUNS / exp
        exp_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"val_bpb": bpb, "size_bytes_int8": size, "tokens_trained": 16_384 * i, "latency_ms_p50": 1.5}
        (exp_dir / layout.METRICS_JSON).write_text(json.dumps(metrics))
        finished_at = start + 60 * i
        os.utime(exp_dir / layout.METRICS_JSON, (finished_at, finished_at))
        section = f"## {exp}: train (planned by offline)\n\n{plan['rationale']}\n"
        write_code_record(exp_dir, ws_root if code_editing else None)
        if i == 2:
            edit_dir = exp_dir / layout.EDIT_LOGS
            edit_dir.mkdir()
            shown = f"Detected a custom API key: ...{secret[-20:]}" if secret else "no key here"
            (edit_dir / "gui_transcript.jsonl").write_text(
                json.dumps({"t": finished_at, "step": 0, "screenshot": "0000.png", "action": None, "text": shown})
                + "\n"
                + json.dumps({"step": 1, "action": "typed instruction", "text": f"export KEY={secret}"})
                + "\n"
            )
            section += "Code change: use a gated MLP\n\n- gui changed 1 file(s) (nas/model.py), $0.0150\n"
        section += f"\n**{'keep' if keep else 'discard'}**: {'better' if keep else 'worse'} than the incumbent\n\n"
        journal.append(section)
        rows.append(
            {
                "experiment": exp,
                "commit": commit[:10],
                "kind": "train",
                "decision": "keep" if keep else "discard",
                "val_bpb": f"{bpb:.6g}",
                "size_bytes_int8": size,
                "latency_ms_p50": 1.5,
                "params": 100_000 + i,
                "delta_bpb": f"{bpb - best:.6g}",
                "noise_bpb": 0.004,
                "seed": 0,
                "arch": f"L2 d{64 + i}",
                "rationale": plan["rationale"],
                "reason": f"judge says {'keep' if keep else 'discard'} {exp}",
                "planner": "offline",
                "noise_source": "floor",
            }
        )
        calls.append({"role": "planner", "provider": "x", "model": "m", "cost_usd": 0.001, "at": finished_at - 30})
    with open(ws_root / layout.RESULTS_TSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=layout.RESULT_COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    (ws_root / layout.JOURNAL).write_text("".join(journal))
    (folder / layout.LLM_CALLS).write_text("".join(json.dumps(c) + "\n" for c in calls))
    if finished:
        (folder / layout.SUMMARY_JSON).write_text(json.dumps({"experiments": n, "elapsed_s": 60.0 * n}))
    return folder
