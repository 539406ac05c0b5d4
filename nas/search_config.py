"""What a search is asked to do (:class:`SearchConfig`), as the CLI and the agent's plans give it.

Kept apart from the search itself so that reading a plan or a stored study's config needs neither torch nor the
executors. The config is stored on the stage-1 study, and a resume compares the fields that decide how trials are
scored (:data:`SCORED_ALIKE`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.budget import parse_budget
from harness.data import CorpusSpec
from harness.run_files import EVAL_BYTES
from nas.objectives import SearchLimits

Strategy = Literal["nsga2", "evolution", "random"]
# fields a resumed study must share with the one stored: otherwise its trials would not be comparable
SCORED_ALIKE = ("space", "objectives", "tokenizer", "stage1_budget", "corpus", "eval_bytes", "rungs", "max_budget")


class SearchConfig(BaseModel):
    """A search, as the CLI or the agent asks for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: str
    space: str = "default"
    objectives: str = "bpb,bytes_int8"
    strategy: Strategy = "nsga2"
    limits: SearchLimits = SearchLimits()
    trials: int | None = Field(None, ge=1, description="stage-1 trainings to run (None: until the budget)")
    budget: str | None = Field(None, description="wall-clock budget of the whole search, e.g. 1h")
    cap_trials: bool = Field(
        False,
        description="trials stop at the end of --budget (a capped trial is a partial result), "
        "so the search ends by it; otherwise a running trial finishes",
    )
    stage1_budget: str = "30s"
    stage2_budget: str | None = "120s"
    eta: int = Field(3, ge=2, description="promote the best 1/eta of stage 1")
    stage2_max: int = Field(4, ge=0)
    stage2_share: float = Field(0.3, ge=0, lt=1, description="part of --budget kept for stage 2")
    screen: bool = True
    screen_proxy: str = Field(
        "learned",
        description="what ranks a screening batch: a proxy of nas.proxies, or 'learned' (nas.ranker; ranked best "
        "within parameter bins in benchmarks/results/proxy_correlation.json)",
    )
    screen_dataset: str | None = Field(
        None, description="a proxy_correlation dataset (JSON) the learned screening ranker also fits on"
    )
    screen_min_fit: int = Field(12, ge=3, description="trained points the learned screening ranker needs to decide")
    screen_by: Literal["score", "front"] = Field(
        "score",
        description="what a screening batch keeps: the best scores, or the predicted front over (score, the "
        "objectives known before training: size, parameters), which keeps small models in a multi-objective search",
    )
    screen_batch: int = Field(6, ge=1)
    screen_keep: float = Field(0.5, gt=0, le=1)
    population: int = Field(12, ge=2)
    tournament: int = Field(4, ge=2)
    seed: int = 0
    executor: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1)
    ray_address: str | None = None
    storage: str | None = None
    study_name: str = "search"
    corpus: CorpusSpec = CorpusSpec()
    tokenizer: str = "byte"
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    eval_bytes: int = Field(EVAL_BYTES, gt=0)
    trial_timeout_s: float = Field(1800.0, gt=0, description="limit for token-budget trials")
    export_hf: bool = True
    # rungs (successive halving across several fidelities, nas.rungs): set both to replace stage 1 / stage 2
    rungs: str | None = Field(None, description="fractions of --max-budget, e.g. 1/27,1/9,1/3,1 (None: two stages)")
    max_budget: str | None = Field(None, description="token budget of the last rung, e.g. 270ktok")
    replicates: int = Field(2, ge=0, description="trials per rung trained again with another seed (rung noise)")
    noise_z: float = Field(1.0, ge=0, description="promotion margin in standard deviations of a difference")
    promote_cap: float = Field(1.5, ge=1, description="promotions per rung at most this times the noise-free quota")
    token_budget: str | None = Field(None, description="tokens trained by all trials together, e.g. 5Mtok")
    inherit: bool = Field(False, description="evolution children start from their parent when that keeps function")
    grow_share: float = Field(0.5, ge=0, le=1, description="with inherit, share of children mutated by growth moves")

    @field_validator("stage2_budget", mode="before")
    @classmethod
    def _none_means_no_stage2(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "off", "0") else v

    @field_validator("rungs", "max_budget", "token_budget", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "off") else v

    @model_validator(mode="after")
    def _rungs_need_a_token_budget(self) -> SearchConfig:
        if (self.rungs is None) != (self.max_budget is None):
            raise ValueError("rungs and max_budget go together: give both (or neither, for the two stages)")
        return self

    @property
    def token_budget_tokens(self) -> int | None:
        """``token_budget`` as a count (the search checks at its start that it is one)."""
        return parse_budget(self.token_budget).tokens if self.token_budget else None

    @property
    def n_stages(self) -> int:
        """Studies the search keeps: one per rung, or stage 1 and stage 2."""
        return len([part for part in self.rungs.split(",") if part.strip()]) if self.rungs else 2

    @property
    def has_stage2(self) -> bool:
        """Whether any stage-1 trial can be promoted to a longer training."""
        return bool(self.stage2_budget) and self.stage2_max > 0
