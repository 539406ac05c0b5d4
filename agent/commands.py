"""``autonas run | resume | status | review``: the research agent's front door."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from agent.settings import RunSettings
from nas.cli import console, err_console, user_errors
from nas.errors import UserError


def _load_settings(run_id: str, runs_dir: Path) -> RunSettings:
    path = runs_dir / run_id / "run.json"
    if not path.is_file():
        raise UserError(f"no run {run_id!r} in {runs_dir} (expected {path})")
    return RunSettings.model_validate_json(path.read_text())


def _drive(settings: RunSettings, fresh: bool) -> dict[str, Any]:
    """Run the graph from its start (fresh) or from its last checkpoint; Ctrl-C ends cleanly after the node."""
    from agent.graph import ResearchAgent, build_graph, graph_config, open_checkpointer
    from sandbox.workspace import WorkspaceError

    try:
        agent = ResearchAgent(settings)
        agent.workspace()
    except WorkspaceError as err:
        raise UserError(str(err)) from None
    saver = open_checkpointer(settings.run_dir)
    graph = build_graph(agent).compile(checkpointer=saver)
    config = graph_config(settings.run_id)
    snapshot = graph.get_state(config)
    if not fresh and not snapshot.next:
        if snapshot.values.get("done"):
            raise UserError(f"run {settings.run_id} has finished; its report is {settings.run_dir / 'report.md'}")
    err_console.print("planner: offline (deterministic strategy); judge: metric rule with measured noise", highlight=False)
    try:
        state = graph.invoke({"step": 0, "history": [], "elapsed_s": 0.0, "worker_s": 0.0, "agent_s": 0.0} if fresh else None, config)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; state kept. continue with: autonas resume {settings.run_id}", highlight=False)
        raise typer.Exit(130) from None
    return state


def run_command(
    goal: Annotated[str, typer.Argument(help='e.g. "find the best Python code model under 8 MB"')],
    budget: Annotated[str, typer.Option(help="wall clock for the whole run: 10m, 8h")] = "10m",
    experiment_budget: Annotated[str, typer.Option(help="training budget of one experiment")] = "60s",
    max_experiments: Annotated[Optional[int], typer.Option(min=1)] = None,
    max_cost: Annotated[Optional[float], typer.Option(help="USD cap on LLM spend (the offline planner spends none)")] = None,
    max_gpu_hours: Annotated[Optional[float], typer.Option()] = None,
    search_trials: Annotated[int, typer.Option(min=1)] = 6,
    run_id: Annotated[Optional[str], typer.Option(help="default: a timestamp")] = None,
    runs_dir: Annotated[Path, typer.Option()] = Path("runs"),
    tokenizer: Annotated[str, typer.Option()] = "byte",
    corpus: Annotated[str, typer.Option()] = "stdlib",
    eval_bytes: Annotated[int, typer.Option(min=1)] = 131_072,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Start a research run: plan, edit, run, judge and commit experiments until the budget is spent."""
    _run(**locals())


@user_errors
def _run(goal: str, budget: str, experiment_budget: str, max_experiments: int | None, max_cost: float | None,
         max_gpu_hours: float | None, search_trials: int, run_id: str | None, runs_dir: Path, tokenizer: str, corpus: str,
         eval_bytes: int, seed: int) -> None:
    from agent.goal import parse_goal
    from nas.budget import parse_budget
    from nas.tokenizer import parse_tokenizer_spec
    from sandbox.workspace import Workspace, WorkspaceError

    parse_goal(goal)
    total = parse_budget(budget)
    if total.seconds is None:
        raise UserError("--budget is wall-clock time (e.g. 10m, 8h)")
    parse_budget(experiment_budget)
    parse_tokenizer_spec(tokenizer)
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", run_id):
        raise UserError(f"run id {run_id!r} may use letters, digits, '.', '_' and '-' only")
    settings = RunSettings(run_id=run_id, goal=goal, runs_dir=str(runs_dir), budget_s=total.seconds,
                           experiment_budget=experiment_budget, max_experiments=max_experiments, max_cost_usd=max_cost,
                           max_gpu_hours=max_gpu_hours, search_trials=search_trials, tokenizer=tokenizer, corpus=corpus,
                           eval_bytes=eval_bytes, seed=seed)
    if settings.run_dir.exists():
        raise UserError(f"run {run_id!r} already exists in {runs_dir}: resume it with `autonas resume {run_id}` or pick another --run-id")
    try:
        settings.run_dir.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot create {settings.run_dir}: {err.strerror or err}") from None
    try:
        Workspace.create(settings.workspace, run_id)
    except WorkspaceError as err:
        raise UserError(str(err)) from None
    (settings.run_dir / "run.json").write_text(settings.model_dump_json(indent=2))
    err_console.print(f"run {run_id}: {goal!r}, budget {budget}, folder {settings.run_dir}", highlight=False)
    state = _drive(settings, fresh=True)
    _summary(settings, state)


def resume_command(
    run_id: Annotated[str, typer.Argument()],
    runs_dir: Annotated[Path, typer.Option()] = Path("runs"),
) -> None:
    """Continue a run from its last finished node (after a crash, Ctrl-C or kill -9)."""
    _resume(run_id, runs_dir)


@user_errors
def _resume(run_id: str, runs_dir: Path) -> None:
    settings = _load_settings(run_id, runs_dir)
    (settings.run_dir / "STOP").unlink(missing_ok=True)
    state = _drive(settings, fresh=False)
    _summary(settings, state)


def _summary(settings: RunSettings, state: dict[str, Any]) -> None:
    hist = state.get("history", [])
    inc = state.get("incumbent")
    console.print(f"{len(hist)} experiments, {sum(h['decision'] == 'keep' for h in hist)} kept; "
                  f"best val bpb {inc['val_bpb']:.4f} ({inc['id']})" if inc else f"{len(hist)} experiments, none kept", highlight=False)
    console.print(f"report: {settings.run_dir / 'report.md'}", highlight=False)


def status_command(run_id: Annotated[str, typer.Argument()], runs_dir: Annotated[Path, typer.Option()] = Path("runs")) -> None:
    """Where a run stands (works while it runs)."""
    _status(run_id, runs_dir)


@user_errors
def _status(run_id: str, runs_dir: Path) -> None:
    import csv

    settings = _load_settings(run_id, runs_dir)
    results = settings.workspace / "results.tsv"
    rows = list(csv.DictReader(open(results), delimiter="\t")) if results.is_file() else []
    table = Table(title=f"run {run_id}: {settings.goal}")
    for col in ("experiment", "kind", "decision", "val_bpb", "size_bytes_int8", "delta_bpb", "arch"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r.get(c, "") for c in ("experiment", "kind", "decision", "val_bpb", "size_bytes_int8", "delta_bpb", "arch")))
    console.print(table)
    summary = settings.run_dir / "summary.json"
    state = "finished" if summary.is_file() else ("stopping (STOP file)" if (settings.run_dir / "STOP").exists() else "running or interrupted")
    console.print(f"{len(rows)} experiments recorded; {state}", highlight=False)


def review_command(run_id: Annotated[str, typer.Argument()], runs_dir: Annotated[Path, typer.Option()] = Path("runs")) -> None:
    """The agent's commits with their metric deltas against the previous best."""
    _review(run_id, runs_dir)


@user_errors
def _review(run_id: str, runs_dir: Path) -> None:
    from sandbox.workspace import Workspace, WorkspaceError

    settings = _load_settings(run_id, runs_dir)
    try:
        ws = Workspace.open(settings.workspace, run_id)
    except WorkspaceError as err:
        raise UserError(str(err)) from None
    table = Table(title=f"kept experiments of {run_id} (branch {ws.branch})")
    for col in ("commit", "experiment", "val bpb", "vs previous best", "int8 MB", "title"):
        table.add_column(col)
    best: float | None = None
    for e in ws.experiments():
        bpb = float(e.trailers["val-bpb"]) if "val-bpb" in e.trailers else None
        delta = "" if bpb is None or best is None else f"{bpb - best:+.4f}"
        if bpb is not None and e.trailers.get("kind") == "train":
            best = bpb if best is None else min(best, bpb)
        size = f"{float(e.trailers['size-int8-bytes']) / 1e6:.3f}" if "size-int8-bytes" in e.trailers else ""
        table.add_row(e.sha[:10], e.trailers.get("experiment", ""), f"{bpb:.4f}" if bpb is not None else "", delta, size, e.title)
    console.print(table)
    discarded = ws.discarded_refs()
    if discarded:
        console.print(f"{len(discarded)} discarded experiments kept as refs: " + ", ".join(sorted(discarded)), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
    app.command("status")(status_command)
    app.command("review")(review_command)
