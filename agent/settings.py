"""What a run was asked to do; saved as run.json so ``autonas resume`` rebuilds the same run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.llm import LLMSpec
from harness.run_files import EVAL_BYTES


class RunSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    goal: str
    runs_dir: str = "runs"
    budget_s: float = Field(600.0, gt=0, description="wall clock for the whole run")
    experiment_budget: str = "60s"
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
