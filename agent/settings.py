"""What a run was asked to do; saved as run.json so ``autonas resume`` rebuilds the same run.

This model is the one declaration of a run's settings: ``autonas run`` takes its option defaults from the fields
here and builds the model once. Budgets are kept as the person wrote them (``10m``, ``500ktok``) and parsed in
one place (:func:`_parse_budget`); the seconds the agent counts with are derived properties (``budget_s``,
``grace_s``, ``editor_timeout_s``), so a run.json never holds two spellings of the same idea. A run.json written
before this (``budget_s``, ``grace_s``, ``editor_timeout_s`` in seconds) is read as the same budgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.llm import LLMSpec
from harness.budget import Budget
from harness.run_files import EVAL_BYTES
from nas import validate

# About 65 s of the default architecture (4 x 128, context 256, byte tokens) on one thread of the 2-core
# development machine under other load (7,700 tokens/s, measured with `python -m nas train --budget 30s`):
# the old default of 60 s, counted in tokens so that a result does not depend on the machine's load.
DEFAULT_EXPERIMENT_BUDGET = "500ktok"

# Budget fields: the flag a person writes each with, and whether it is wall clock only (else tokens may do).
_BUDGET_FLAGS = {
    "budget": ("--budget", True),
    "experiment_budget": ("--experiment-budget", False),
    "grace": ("--grace", True),
    "editor_timeout": ("--editor-timeout", True),
}
# run.json of earlier versions: seconds under these names.
_OLD_SECONDS = {"budget_s": "budget", "grace_s": "grace", "editor_timeout_s": "editor_timeout"}


def _parse_budget(field: str, text: str) -> Budget:
    """The one place a run's budget strings are read. A bad one raises :class:`UserError` in the words of the
    flag the person wrote it with (pydantic lets it through unwrapped), so ``autonas run`` says one line."""
    flag, time_only = _BUDGET_FLAGS[field]
    return validate.budget(text, flag, time_only=time_only)


def _seconds_text(seconds: float) -> str:
    """600.0 -> '600s', 0.5 -> '0.5s': a budget string that parses back to the same seconds."""
    return f"{seconds:f}".rstrip("0").rstrip(".") + "s"


class RunSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    goal: str
    runs_dir: str = "runs"
    budget: str = Field("10m", description="wall clock for the whole run: 10m, 8h")
    experiment_budget: str = Field(
        DEFAULT_EXPERIMENT_BUDGET,
        description="training budget of one experiment: tokens "
        "(the default: the same number on a loaded machine) or wall clock",
    )
    grace: str = Field(
        "30s",
        description="an experiment still running this long after the run's budget is killed; "
        "each worker's own wall cap is the time left, so it stops cleanly before",
    )
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
    max_plan_attempts: int = Field(
        3, ge=1, le=10, description="invalid LLM plans before the offline planner takes the step"
    )
    prompts_dir: str | None = Field(None, description="folder of prompt templates overriding prompts/*.txt")
    editors: tuple[str, ...] = Field(
        ("builtin",), min_length=1, description="code editors tried in order for a plan's code_change"
    )
    claude_binary: str | None = None
    claude_model: str | None = None
    editor_max_turns: int = Field(30, ge=1, le=500)
    editor_timeout: str = Field("15m", description="wall clock of one code edit")

    @model_validator(mode="before")
    @classmethod
    def _read_old_seconds(cls, data: Any) -> Any:
        """A run.json of an earlier version stored ``budget_s`` (and grace, editor timeout) as seconds."""
        if isinstance(data, dict) and any(old in data for old in _OLD_SECONDS):
            data = dict(data)
            for old, new in _OLD_SECONDS.items():
                if old in data and new not in data:
                    seconds = data.pop(old)
                    data[new] = _seconds_text(float(seconds)) if isinstance(seconds, (int, float)) else seconds
        return data

    @field_validator("budget", "experiment_budget", "grace", "editor_timeout")
    @classmethod
    def _budget_reads(cls, text: str, info: ValidationInfo) -> str:
        assert info.field_name is not None  # pydantic names the field a field validator runs on
        _parse_budget(info.field_name, text)
        return text

    @property
    def budget_s(self) -> float:
        """Wall clock of the whole run, in seconds."""
        return _parse_budget("budget", self.budget).seconds or 0.0

    @property
    def grace_s(self) -> float:
        """Seconds an experiment may run past the run's budget before it is killed."""
        return _parse_budget("grace", self.grace).seconds or 0.0

    @property
    def editor_timeout_s(self) -> float:
        """Wall clock of one code edit, in seconds."""
        return _parse_budget("editor_timeout", self.editor_timeout).seconds or 0.0

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
