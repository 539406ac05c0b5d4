"""What the loop remembers of an experiment's code edit: a typed summary of the editors' attempts.

It lives in the checkpointed state (``AgentState.edit`` while the experiment runs, ``HistoryEntry.edit`` after), so
it is a pydantic model the checkpointer rebuilds (:data:`agent.state.CHECKPOINT_TYPES`), and it holds only what the
run, the record and a later replay of the same change read: whether it worked, who made it, the files, the cost, the
stored diff and one line per attempt. Its fields are the keys of the dict earlier versions stored, so an old
checkpoint's summary validates as this model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EditAttempt(BaseModel):
    """One editor's try in the fallback chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    editor: str
    ok: bool
    error: str | None = None
    wall_s: float = Field(0.0, ge=0)
    transcript: str | None = None  # the editor's log (Claude Code's JSONL, the GUI's screenshots), if it wrote one


class EditSummary(BaseModel):
    """The outcome of the edit node: the last attempt's result, with every attempt's line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    editor: str  # the editor of the last attempt: the one that made the change when ``ok``
    files: list[str] = []
    error: str | None = None  # every attempt's error, "editor: error; ...", when none succeeded
    cost_usd: float = Field(0.0, ge=0)  # all attempts together
    turns: int | None = None
    session_id: str | None = None
    patch: str | None = None  # the stored diff (absolute path) a re-run of the same change replays
    attempts: list[EditAttempt] = []
