"""A training request: the one declaration of what a plan, a search trial and a distillation name about a training
run (the architecture, the budget as written, the learning rate, the batch size and the seed).

The agent's ``train`` plan config is this request (its bounds tightened for a planner), a distillation plan's config
extends it with the teacher and the loss, and a search trial's :class:`nas.trial.TrialSpec` extends it with where and
how the worker runs it. Each is flat JSON, so plans and trial specs read the same as before this type existed.

:meth:`TrainRequest.train_config` is the one conversion to the trainer's :class:`nas.train.TrainConfig`. It lives here,
not on ``TrainConfig``: ``nas/train.py`` is editable model code that a run's workspace may replace with its own copy,
so fixed code calls only what every copy has (``TrainConfig.from_budget``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from harness.budget import parse_budget
from nas.space import ArchConfig
from nas.validate import MAX_SEED

if TYPE_CHECKING:  # nas.train imports torch; a plan's or a trial spec's parse needs none
    from nas.train import TrainConfig


class TrainRequest(BaseModel):
    """The shared part of every training request; the bounds are the trainer's (a planner's are tighter)."""

    model_config = ConfigDict(extra="forbid")

    arch: ArchConfig
    budget: str = Field(description="wall clock (60s, 10m) or tokens (500ktok): what the trainer may spend")
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(16, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    def train_config(self, **knobs: Any) -> TrainConfig:
        """The trainer's configuration of this request; ``knobs`` are the rest of it (device, eval bytes, caps)."""
        # deliberate: nas.train imports torch, which only a process that trains needs
        from nas.train import TrainConfig

        return TrainConfig.from_budget(
            parse_budget(self.budget), lr=self.lr, batch_size=self.batch_size, seed=self.seed, **knobs
        )
