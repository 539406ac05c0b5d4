"""The agent's checkpointed state: typed, so that a node reads a plan, a verdict or a past experiment as the model
it is, never as a dict indexed by string.

LangGraph's checkpointer serialises the pydantic models here (and rebuilds them on resume) as long as their classes
are registered with it (:data:`CHECKPOINT_TYPES`, used by :func:`agent.graph.open_checkpointer`). The history and
the timers are reducer channels: a node returns only its own experiment or its own seconds, and LangGraph adds them.
A checkpoint written by an older version (plans and history as plain dicts) is refused in one line, not resumed.

Words (one per idea, as in :mod:`harness.run_files`): a worker's run that ended without a result is ``crashed`` (its
metrics' ``status``, the text why in ``fail_reason``); the judge's decision for it is ``crash`` (results.tsv's
``decision``); an entry's ``reason`` is the judge's justification of its decision, whatever the decision.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

from pydantic import BaseModel, ConfigDict

from agent.edits import EditSummary
from agent.judge import MIN_NOISE, Decision, Verdict
from agent.plans import PLAN_CLASSES, AnyPlan, Plan
from harness.errors import UserError


class HistoryEntry(BaseModel):
    """One finished experiment as the loop remembers it (its row in results.tsv says the same in columns)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    plan: Plan
    decision: Decision
    reason: str = ""
    planner: str = "offline"
    commit: str = ""
    edit: EditSummary | None = None  # the attempts of the code edit, if any
    run_dir: str | None = None
    worker_s: float | None = None
    val_bpb: float | None = None
    metrics: dict[str, Any] = {}  # metrics.json's numbers and strings (flat)
    noise_bpb: float = MIN_NOISE  # the margin the result was judged against ...
    noise_source: str = "floor"  # ... "measured" from repeats, or the judge's "floor"

    @property
    def has_model(self) -> bool:
        """A finished model (train / distill with a val bpb in its run folder): a teacher, a target, an incumbent."""
        return self.plan.is_model and self.val_bpb is not None and bool(self.run_dir)


class AgentState(TypedDict, total=False):
    step: int
    plan: AnyPlan | None
    plan_source: str | None
    exp_id: str | None
    run_dir: str | None
    metrics: dict[str, Any] | None  # the experiment's flat metrics.json (a file contract), as scored by the harness
    exp_worker_s: float | None
    verdict: Verdict | None
    edit: EditSummary | None
    history: Annotated[list[HistoryEntry], operator.add]
    incumbent: HistoryEntry | None
    noise: float | None
    elapsed_s: Annotated[float, operator.add]
    worker_s: Annotated[float, operator.add]
    agent_s: Annotated[float, operator.add]
    done: bool
    stop_reason: str


#: the classes the checkpointer may rebuild, ``(module, name)`` as langgraph's ``allowed_msgpack_modules`` wants them:
#: the models the state holds at its top level (nested ones, a plan's config, are stored in their parent's dump)
_CHECKPOINT_CLASSES: tuple[type, ...] = (*PLAN_CLASSES, Verdict, HistoryEntry, EditSummary)
CHECKPOINT_TYPES: tuple[tuple[str, str], ...] = tuple((cls.__module__, cls.__name__) for cls in _CHECKPOINT_CLASSES)


def refuse_old_state(state: AgentState, run_id: str) -> None:
    """A checkpoint from an earlier version (dicts where the models are) cannot be resumed: say so in one line."""
    old = (
        isinstance(state.get("plan"), dict)
        or isinstance(state.get("verdict"), dict)
        or isinstance(state.get("incumbent"), dict)
        or any(not isinstance(h, HistoryEntry) for h in state.get("history", []))
    )
    if old:
        raise UserError(
            f"run {run_id} was checkpointed by an older version of autonas, whose state this one cannot "
            "resume: start a new run (its workspace, results.tsv and commits stay as they are)"
        )


def current_edit(state: AgentState) -> EditSummary | None:
    """The experiment's edit summary; a checkpoint of an earlier version holds it as a dict of the same keys, read
    as the model (so a run killed between its edit and its record still resumes)."""
    edit: Any = state.get("edit")
    return EditSummary.model_validate(edit) if isinstance(edit, dict) else edit


def model_runs(history: list[HistoryEntry]) -> dict[str, str]:
    """Experiment id -> run folder of every finished model (train / distill with a val bpb)."""
    return {h.id: h.run_dir for h in history if h.has_model and h.run_dir}


def resolve_model_ref(ref: str, state: AgentState) -> str:
    """'incumbent' or an experiment id -> that model's run folder (absolute)."""
    if ref == "incumbent":
        inc = state.get("incumbent")
        if not inc or not inc.run_dir:
            raise UserError("no incumbent model yet")
        path = inc.run_dir
    else:
        runs = model_runs(state.get("history", []))
        if ref not in runs:
            raise UserError(f"experiment {ref} has no finished model")
        path = runs[ref]
    if not (Path(path) / "model.safetensors").is_file():
        raise UserError(f"the model of {ref} is missing ({path})")
    return str(Path(path).resolve())


def noise_margin(verdict: Verdict, state: AgentState) -> tuple[float, str]:
    """The run-to-run noise (bpb) a result was judged against: measured from repeats, or the judge's floor
    (said so) while no repeat has finished."""
    measured = verdict.noise if verdict.noise is not None else state.get("noise")
    return (float(measured), "measured") if measured is not None else (MIN_NOISE, "floor")
