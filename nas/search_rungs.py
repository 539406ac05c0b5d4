"""The rungs of a search with ``--rungs``: what each rung trains, its measured noise, and the next replicate or
promotion (the decisions themselves are :mod:`nas.rungs`, pure; this module applies them to the studies).

Rung k is stage k (study ``<name>`` for rung 1, ``<name>.stage<k>`` above). A trial of rung 1 trains ``r_1`` tokens;
a trial promoted to rung k continues from its rung-(k-1) folder (same architecture, a plain copy of the weights) and
trains the difference ``r_k - r_(k-1)``, so its model has seen ``r_k`` tokens in all (``tokens_cumulative``).

Replicates measure each promoting rung's noise (every rung but the last, whose noise decides nothing, so no full
training is spent on it): the first ``replicates`` finished trials of a rung are trained again with another seed, in
``trials/s<k>-<number>-r1`` (a replicate above rung 1 continues from its parent's replicate when that exists, so
the whole lineage is measured twice; else from the same start). Each replicate folder holds ``job.json``, written
when the job is made, so a resumed search finds the replicates it had started. The measured sigmas are written to
``rungs.json`` after every result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.budget import parse_budget
from harness.run_files import METRICS_FILE, RunFileError, read_metrics
from nas.rungs import next_promotion, noise_margin, parse_rungs, pooled_sigma, replicated_rungs, rung_tokens
from nas.search_config import SearchConfig
from nas.search_schedule import Job, trial_folder
from nas.search_study import SearchStudies, arch_attrs
from nas.space import ArchConfig

RUNGS_FILE = "rungs.json"
JOB_FILE = "job.json"  # in a replicate's folder: the job, so a resume can run it again


@dataclass(frozen=True)
class RungNoise:
    """One rung's budget and measured noise, as rungs.json and pareto.json report it."""

    rung: int
    tokens: int  # cumulative tokens of a trial of this rung
    replicate_pairs: int
    sigma_bpb: float | None  # None until a replicate pair is finished: promotions then use the plain rule
    margin_bpb: float | None


class RungLadder:
    """The rungs of one search over its studies and run folder."""

    def __init__(self, cfg: SearchConfig, out: Path, studies: SearchStudies):
        assert cfg.rungs is not None and cfg.max_budget is not None, "a search without rungs has no ladder"
        self.cfg, self.out, self.studies = cfg, out, studies
        max_tokens = parse_budget(cfg.max_budget).tokens
        assert max_tokens is not None, "Search checks that --max-budget is a token count"
        self.tokens = rung_tokens(max_tokens, parse_rungs(cfg.rungs))

    # ----------------------------------------------------------------------------------------- budgets

    def budget_tokens(self, stage: int) -> int:
        """Tokens a trial of ``stage`` trains itself (rung 1 all of its rung, above the difference)."""
        return self.tokens[0] if stage == 1 else self.tokens[stage - 1] - self.tokens[stage - 2]

    def budget(self, stage: int) -> str:
        return f"{self.budget_tokens(stage)}tok"

    # ----------------------------------------------------------------------------------------- noise

    def _replicate_folders(self, stage: int) -> list[Path]:
        """Replicates of ``stage`` made so far (finished or not), by trial number."""
        return sorted(p.parent for p in (self.out / "trials").glob(f"s{stage}-*-r1/{JOB_FILE}"))

    def _ok_bpb(self, folder: Path) -> float | None:
        try:
            m = read_metrics(folder / METRICS_FILE)
        except (RunFileError, OSError):
            return None
        return float(m.val_bpb) if m.status == "ok" and m.val_bpb is not None else None

    def pairs(self, stage: int) -> list[tuple[float, float]]:
        """(bpb of the trial, bpb of its replicate) for each finished replicate pair of ``stage``."""
        main = {t.number: t.user_attrs["metrics"]["val_bpb"] for t in self.studies.ok_trials(stage)}
        out = []
        for folder in self._replicate_folders(stage):
            number = int(folder.name.split("-")[1])
            rep = self._ok_bpb(folder)
            if rep is not None and number in main:
                out.append((float(main[number]), rep))
        return out

    def sigma(self, stage: int) -> float | None:
        return pooled_sigma(self.pairs(stage))

    def noise(self) -> list[RungNoise]:
        out = []
        for stage in self.studies.stages:
            pairs = self.pairs(stage)
            sigma = pooled_sigma(pairs)
            margin = noise_margin(sigma, self.cfg.noise_z) if sigma is not None else None
            out.append(RungNoise(stage, self.tokens[stage - 1], len(pairs), sigma, margin))
        return out

    def write_json(self) -> dict[str, Any]:
        """rungs.json: the rungs, the rule's settings and each rung's measured noise (returned too)."""
        record: dict[str, Any] = {
            "rungs": self.cfg.rungs,
            "max_budget": self.cfg.max_budget,
            "eta": self.cfg.eta,
            "noise_z": self.cfg.noise_z,
            "promote_cap": self.cfg.promote_cap,
            "noise": [asdict(n) for n in self.noise()],
        }
        (self.out / RUNGS_FILE).write_text(json.dumps(record, indent=2))
        return record

    # ----------------------------------------------------------------------------------------- replicates

    def next_replicate(self, fits: int | None = None) -> Job | None:
        """A replicate still owed to some rung (lowest rung first), its job.json written; None when none is owed.
        ``fits``: tokens left for it (None: no limit)."""
        if self.cfg.replicates <= 0:
            return None
        for stage in replicated_rungs(len(self.tokens)):
            made = {int(p.name.split("-")[1]) for p in self._replicate_folders(stage)}
            if len(made) >= self.cfg.replicates:
                continue
            todo = [t for t in self.studies.ok_trials(stage) if t.number not in made]
            if not todo:
                continue

            def start(t_attrs: dict[str, object], stage: int = stage) -> str | None:
                """The replicate's start: its parent's replicate when that finished, else the trial's own start."""
                parent = t_attrs.get("parent")
                if stage > 1 and isinstance(parent, int):
                    rep = trial_folder(self.out, stage - 1, parent, 1)
                    if self._ok_bpb(rep) is not None:
                        return str(rep)
                init = t_attrs.get("init_from")
                return str(init) if init else None

            # rung 1: a trial from scratch measures the whole seed noise; above, one whose parent was replicated
            t = min(todo, key=lambda t: (self._preference(stage, start(t.user_attrs)), t.number))
            job = Job(
                stage,
                t.number,
                ArchConfig(**t.user_attrs["arch"]),
                budget=str(t.user_attrs.get("train_budget") or self.budget(stage)),
                init_from=start(t.user_attrs),
                replicate=1,
            )
            if fits is not None and (parse_budget(str(job.budget)).tokens or 0) > fits:
                continue
            folder = trial_folder(self.out, stage, t.number, 1)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / JOB_FILE).write_text(json.dumps(_job_json(job)))
            return job
        return None

    def _preference(self, stage: int, start: str | None) -> int:
        """0 for the replicate that measures more of the noise: at rung 1 one from scratch (the seed's whole
        effect), above one that continues from its parent's replicate (the lineage twice)."""
        if stage == 1:
            return 0 if start is None else 1
        return 0 if start is not None and Path(start).name.endswith("-r1") else 1

    def unfinished_replicates(self) -> list[Job]:
        """Replicates a killed search had started: their folders hold job.json but no metrics.json."""
        jobs = []
        for stage in self.studies.stages:
            for folder in self._replicate_folders(stage):
                if not (folder / METRICS_FILE).exists():
                    raw = json.loads((folder / JOB_FILE).read_text())
                    jobs.append(Job(**{**raw, "arch": ArchConfig(**raw["arch"])}))
        return jobs

    # ----------------------------------------------------------------------------------------- promotions

    def promotion_cost(self) -> int | None:
        """Tokens of the cheapest promotion (from rung 1); None when there is no rung to promote to."""
        return self.budget_tokens(2) if len(self.tokens) > 1 else None

    def next_promotion(self, fits: int | None = None) -> Job | None:
        """The best promotable trial, from the highest rung down, asked in the rung above (ASHA); None when none is
        promotable. ``fits``: tokens left for it (None: no limit)."""
        for stage in reversed(self.studies.stages[:-1]):
            if fits is not None and self.budget_tokens(stage + 1) > fits:
                continue
            ok = self.studies.ok_trials(stage)
            went_up = {t.user_attrs.get("parent") for t in self.studies.trials(stage + 1)}
            promoted = {i for i, t in enumerate(ok) if t.number in went_up}
            sigma = self.sigma(stage) or 0.0
            i = next_promotion(
                [t.values for t in ok], promoted, self.cfg.eta, sigma, self.cfg.noise_z, self.cfg.promote_cap
            )
            if i is None:
                continue
            parent = ok[i]
            arch = ArchConfig(**parent.user_attrs["arch"])
            init_from = str(trial_folder(self.out, stage, parent.number))
            trial = self.studies.ask(stage + 1, parent.params)
            budget = self.budget(stage + 1)
            for key, value in arch_attrs(arch, stage + 1, parent.number, init_from, budget).items():
                trial.set_user_attr(key, value)
            return Job(stage + 1, trial.number, arch, budget, init_from)
        return None


def _job_json(job: Job) -> dict[str, object]:
    return {**asdict(job), "arch": job.arch.model_dump()}
