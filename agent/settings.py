"""What a run was asked to do; saved as run.json so ``autonas resume`` rebuilds the same run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.llm import LLMSpec
from harness.run_files import EVAL_BYTES

# About 65 s of the default architecture (4 x 128, context 256, byte tokens) on one thread of the 2-core
# development machine under other load (7,700 tokens/s, measured with `python -m nas train --budget 30s`):
# the old default of 60 s, counted in tokens so that a result does not depend on the machine's load.
DEFAULT_EXPERIMENT_BUDGET = "500ktok"


class RunSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    goal: str
    runs_dir: str = "runs"
    budget_s: float = Field(600.0, gt=0, description="wall clock for the whole run")
    experiment_budget: str = Field(DEFAULT_EXPERIMENT_BUDGET, description="training budget of one experiment: tokens "
                                   "(the default: the same number on a loaded machine) or wall clock")
    grace_s: float = Field(30.0, gt=0, description="an experiment still running this long after the run's budget is "
                           "killed; each worker's own wall cap is the time left, so it stops cleanly before")
    max_experiments: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, ge=0)
    max_gpu_hours: float | None = Field(None, gt=0)
    search_trials: int = Field(6, ge=1)
    tokenizer: str = "byte"
    corpus: str = "stdlib"
    eval_bytes: int = Field(EVAL_BYTES, gt=0)
    memory_mb: int | None = Field(None, gt=0, description="address-space limit of each worker")
    seed: int = 0
    planner: LLMSpec = LLMSpec()
    judge: LLMSpec = LLMSpec()
    max_plan_attempts: int = Field(3, ge=1, le=10, description="invalid LLM plans before the offline planner takes the step")
    prompts_dir: str | None = Field(None, description="folder of prompt templates overriding prompts/*.txt")
    editors: tuple[str, ...] = Field(("builtin",), min_length=1, description="code editors tried in order for a plan's code_change")
    claude_binary: str | None = None
    claude_model: str | None = None
    editor_max_turns: int = Field(30, ge=1, le=500)
    editor_timeout_s: float = Field(900.0, gt=0)

    @property
    def code_editing(self) -> bool:
        """An LLM editor is configured, so plans may change code and the workspace carries the code to change."""
        return any(e != "builtin" for e in self.editors)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    @property
    def workspace(self) -> Path:
        return self.run_dir / "workspace"
