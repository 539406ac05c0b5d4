"""The search's outputs, owned by one class: ``results.tsv``, ``pareto.json``, ``metrics.json`` and ``pareto.png``.

All of them are read back from the studies (trials' user attributes), never from in-memory state, so a resumed or
stopped search writes the same files as an uninterrupted one. Their field names are contracts: tests, the agent's
judge and old run folders read them.

- ``results.tsv``: one row per trial of every stage, and per replicate (``replicate`` 1), rewritten atomically after
  every result; a trial's start (``init``, ``init_from``) and tokens (``tokens_trained``, ``tokens_cumulative``) are
  columns.
- ``pareto.json``: the final front, latency re-measured. Two stages: stage 2's when any stage-2 trial finished ok,
  else stage 1's. Rungs: the front over every trial's furthest rung (each member says its stage), and the rungs'
  measured noise (``rungs``).
- ``metrics.json``: the worker contract, flat: the front's best-bpb member, and trial counts.
- ``pareto.png``: every trained trial and the front, bpb against the second objective.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from harness.metrics import measure_latency
from harness.run_files import METRICS_FILE, RunFileError, read_metrics, write_metrics
from nas.model import build_model
from nas.objectives import Objective
from nas.pareto import pareto_front
from nas.search_config import SearchConfig
from nas.search_export import best_arch_file
from nas.search_schedule import trial_folder
from nas.search_study import TRAINED_STATUSES, SearchStudies, trial_fail_reason, trial_status
from nas.space import ArchConfig
from nas.trial import with_cumulative_tokens

RESULTS_FILE = "results.tsv"
PARETO_FILE = "pareto.json"
PLOT_FILE = "pareto.png"
# results.tsv's first columns; the objectives' metrics follow, then every other field sorted
ROW_HEAD = ("stage", "trial", "state", "status", "fail_reason", "arch_hash", "arch", "parent")
REPLICATE_HEAD = ("replicate", "init", "tokens_cumulative")  # after the objectives: newer columns


@dataclass(frozen=True)
class FrontMember:
    """A trial on the final Pareto front, as pareto.json lists it."""

    stage: int
    trial: int
    arch: ArchConfig
    objectives: dict[str, float]
    metrics: dict[str, Any]
    latency_remeasured: dict[str, Any]  # decode latency of the front member measured again, with more repeats
    folder: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "trial": self.trial,
            "arch_hash": self.arch.short_hash(),
            "arch": self.arch.model_dump(),
            "describe": self.arch.describe(),
            "objectives": self.objectives,
            "metrics": self.metrics,
            "latency_remeasured": self.latency_remeasured,
            "folder": str(self.folder),
        }


class SearchResults:
    """Writes the search's outputs into ``out`` from the studies."""

    def __init__(self, cfg: SearchConfig, out: Path, objectives: list[Objective], studies: SearchStudies):
        self.cfg, self.out, self.objectives, self.studies = cfg, out, objectives, studies

    def rows(self) -> list[dict[str, Any]]:
        """One dict per trial of every stage, then per replicate: metrics and proxies, then its own fields (which
        win)."""
        rows = []
        for stage in self.studies.stages:
            for t in self.studies.trials(stage):
                arch = t.user_attrs.get("arch")
                row: dict[str, Any] = dict(t.user_attrs.get("metrics") or {})
                row.update({f"proxy_{k}": v for k, v in (t.user_attrs.get("proxies") or {}).items()})
                row.update(
                    {
                        "stage": stage,
                        "trial": t.number,
                        "state": t.state.name.lower(),
                        "status": trial_status(t),
                        "fail_reason": trial_fail_reason(t),
                        "arch_hash": t.user_attrs.get("arch_hash", ""),
                        "arch": ArchConfig(**arch).describe() if arch else "",
                        "parent": t.user_attrs.get("parent", ""),
                        "init_from": Path(t.user_attrs["init_from"]).name if t.user_attrs.get("init_from") else "",
                    }
                )
                rows.append(row)
        return rows + self._replicate_rows()

    def _replicate_rows(self) -> list[dict[str, Any]]:
        """Replicates (the same trial again with another seed: a rung's noise) from their folders' metrics.json."""
        rows = []
        for folder in sorted((self.out / "trials").glob("s*-*-r*")):
            stage, number, replicate = folder.name.split("-")
            row: dict[str, Any] = {}
            try:
                row.update(read_metrics(folder / METRICS_FILE).flat())
                status = str(row.get("status", ""))
            except (RunFileError, OSError):
                status = ""
            row.update(
                {
                    "stage": int(stage[1:]),
                    "trial": int(number),
                    "replicate": int(replicate[1:]),
                    "state": "complete" if status else "running",
                    "status": status,
                }
            )
            rows.append(with_cumulative_tokens(row))
        return rows

    def tokens_trained(self) -> int:
        """Tokens trained by every finished trial and replicate of every stage (what --token-budget counts). A
        duplicate carries its twin's metrics and trained nothing itself: only trials that went to a worker count."""
        return sum(int(r.get("tokens_trained") or 0) for r in self.rows() if r["status"] in TRAINED_STATUSES)

    def counts(self) -> dict[str, int]:
        """Trials by stage and status (or state while unfinished): ``{"stage1_ok": 4, "stage1_rejected": 2}``."""
        counts: dict[str, int] = {}
        for r in self.rows():
            kind = "_replicate" if r.get("replicate") else ""
            key = f"stage{r['stage']}{kind}_{r['status'] or r['state']}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def write_tsv(self) -> Path:
        rows = self.rows()
        head = list(ROW_HEAD) + [o.metric for o in self.objectives if o.metric not in ROW_HEAD] + list(REPLICATE_HEAD)
        extra = sorted({k for r in rows for k in r} - set(head))
        path = self.out / RESULTS_FILE
        tmp = path.with_suffix(".tsv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=head + extra, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        tmp.replace(path)
        return path

    def front(self, stage: int) -> list[FrozenTrial]:
        ok = self.studies.ok_trials(stage)
        return [ok[i] for i in pareto_front([t.values for t in ok])]

    def furthest(self) -> list[tuple[int, FrozenTrial]]:
        """Each architecture's ok result at the furthest stage it reached (a rung search's final candidates)."""
        best: dict[str, tuple[int, FrozenTrial]] = {}
        for stage in self.studies.stages:
            for t in self.studies.ok_trials(stage):
                best[t.user_attrs["arch_hash"]] = (stage, t)
        return list(best.values())

    def final_front(self) -> tuple[int, list[FrontMember]]:
        """(highest stage on the front, its members by bpb). Two stages: stage 2's front when it has one, else stage
        1's. Rungs: the front of :meth:`furthest`."""
        if self.cfg.rungs:
            last = self.furthest()
            chosen = [last[i] for i in pareto_front([t.values for _, t in last])]
        else:
            stage = 2 if self.front(2) else 1
            chosen = [(stage, t) for t in self.front(stage)]
        members = []
        for stage, t in sorted(chosen, key=lambda st: st[1].values[0]):
            arch = ArchConfig(**t.user_attrs["arch"])
            lat = measure_latency(build_model(arch, seed=0), warmup=3, repeats=10)
            members.append(
                FrontMember(
                    stage=stage,
                    trial=t.number,
                    arch=arch,
                    objectives={o.name: v for o, v in zip(self.objectives, t.values, strict=True)},
                    metrics=t.user_attrs.get("metrics", {}),
                    latency_remeasured=lat.as_metrics(),
                    folder=trial_folder(self.out, stage, t.number),
                )
            )
        return max((m.stage for m in members), default=1), members

    def write_final(
        self, stage: int, members: list[FrontMember], elapsed_s: float, rungs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """pareto.json, metrics.json, results.tsv and pareto.png for the final front; returns pareto.json's content.
        ``rungs``: a rung search's rungs.json, joined to pareto.json and (its sigmas) to metrics.json."""
        counts = self.counts()
        summary: dict[str, Any] = {
            "study": self.cfg.study_name,
            "objectives": [o.name for o in self.objectives],
            "strategy": self.cfg.strategy,
            "stage_of_front": stage,
            "elapsed_s": round(elapsed_s, 1),
            "counts": counts,
            "tokens_trained": self.tokens_trained(),
            "front": [m.to_json() for m in members],
        }
        if rungs is not None:
            summary["rungs"] = rungs
        (self.out / PARETO_FILE).write_text(json.dumps(summary, indent=2))
        noise = {f"sigma_bpb_rung{n['rung']}": n["sigma_bpb"] for n in (rungs or {}).get("noise", [])}
        self._write_metrics(members, counts, elapsed_s, {k: v for k, v in noise.items() if v is not None})
        self.write_tsv()
        self._plot(members)
        return summary

    def _write_metrics(
        self, members: list[FrontMember], counts: dict[str, int], elapsed_s: float, extra: dict[str, float]
    ) -> None:
        """The worker contract: a flat metrics.json (the best-bpb member of the front, counts, rung noise)."""
        metrics: dict[str, Any] = {
            "status": "ok" if members else "crashed",
            "fail_reason": "" if members else "no trial finished",
            "kind": "search",
            "eval_bytes": self.cfg.eval_bytes,
            "front_size": len(members),
            "stage_of_front": members[0].stage if members else 0,
            "elapsed_s": round(elapsed_s, 1),
            "wall_s": round(elapsed_s, 1),
        }
        metrics.update({f"trials_{k}": v for k, v in counts.items()})
        metrics.update(extra)
        metrics["search_tokens_trained"] = self.tokens_trained()
        if members:
            best = min(members, key=lambda m: m.objectives["bpb"])
            metrics.update(
                {
                    k: v
                    for k, v in best.metrics.items()
                    if isinstance(v, (int, float, str)) and k not in ("status", "fail_reason", "kind")
                }
            )
            metrics.update(best.latency_remeasured)
            metrics["best_trial"] = best.trial
            metrics["best_arch_file"] = str(best_arch_file(self.out, members.index(best), best.arch.short_hash()))
        write_metrics(self.out, metrics)

    def _plot(self, members: list[FrontMember]) -> None:
        import matplotlib  # deliberate: only a finished search draws, and the backend must be set before pyplot loads

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x_obj = self.objectives[1] if len(self.objectives) > 1 else None
        x_key = x_obj.metric if x_obj else "params"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = ("#9aa5b1", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
        for stage, colour in zip(self.studies.stages, colours, strict=False):
            shown = [t for t in self.studies.ok_trials(stage) if t.user_attrs["metrics"].get(x_key) is not None]
            if shown:
                xs = [t.user_attrs["metrics"][x_key] for t in shown]
                ax.scatter(xs, [t.values[0] for t in shown], s=18, c=colour, label=f"stage {stage}", alpha=0.8)
        if members:
            fx: list[Any] = [m.metrics.get(x_key) for m in members]  # metric values, as the trainer wrote them
            fy = [m.objectives["bpb"] for m in members]
            order = sorted(range(len(fx)), key=lambda i: fx[i])
            ax.step([fx[i] for i in order], [fy[i] for i in order], where="post", c="#d62728", lw=1.2)
            ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="#d62728", label="Pareto front")
        ax.set_xlabel(x_obj.label if x_obj else "parameters")
        ax.set_ylabel("val bits per byte")
        if x_key.startswith(("size", "params")):
            ax.set_xscale("log")
        ax.set_title(f"{self.cfg.study_name}: {self.cfg.strategy}, {len(members)} on the front")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / PLOT_FILE, dpi=120)
        plt.close(fig)
