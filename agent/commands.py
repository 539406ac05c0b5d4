"""``autonas run | resume | status | review | reproduce``: the research agent's front door.

``run`` declares each option once, as a parameter, with RunSettings' defaults, and builds RunSettings once;
the others read it back from the run's run.json. The graph (langgraph), GitPython and the editors are imported
inside the commands that use them, so ``autonas --help`` and the workers' commands do not load them.
"""

from __future__ import annotations

import csv
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from pydantic import ValidationError
from rich.table import Table

from agent.goal import parse_goal
from agent.llm import KEY_ENV, PROVIDERS, CostLedger, LLMSpec
from agent.prompting import FIELDS
from agent.settings import RunSettings
from harness.cli_support import console, err_console, field_default, user_errors
from harness.errors import UserError, describe_validation_error
from harness.model_code import seed_files as model_code_files
from harness.tokenizer import parse_tokenizer_spec
from nas import validate
from sandbox.gitexe import GitTampered

RUN_ID = re.compile(r"[A-Za-z0-9._-]+")

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from agent.graph import ResearchAgent


def _check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id) or run_id in (".", "..") or len(run_id) > 128:
        raise UserError(f"run id {run_id[:140]!r} may use letters, digits, '.', '_' and '-' only, at most 128 of them")
    return run_id


def _load_settings(run_id: str, runs_dir: Path) -> RunSettings:
    """The run's run.json; a missing, unreadable or corrupt one is one line naming the file."""
    _check_run_id(run_id)
    validate.input_dir(runs_dir, "--runs-dir")
    path = runs_dir / run_id / "run.json"
    if not path.exists() and not path.is_symlink():
        raise UserError(f"no run {run_id!r} in {runs_dir} (expected {path})")
    fix = "restore it (it records what the run was asked) or start a new run with autonas run"
    try:
        text = validate.text_file(path, "run file")
    except UserError:
        raise UserError(f"{path} is corrupt (not UTF-8 text, or unreadable): {fix}") from None
    try:
        return RunSettings.model_validate_json(text)
    except ValidationError as err:
        raise UserError(f"{path} is corrupt ({describe_validation_error(err)[:200]}): {fix}") from None
    except UserError as err:  # a budget that does not read (RunSettings says it in the words of its flag)
        raise UserError(f"{path} is corrupt ({str(err)[:200]}): {fix}") from None


def _read_state_text(path: Path, settings: RunSettings) -> str | None:
    """A text file of the run's state (results.tsv, llm_calls.jsonl); None when absent; corrupt is one line."""
    if not path.exists():
        return None
    try:
        return validate.text_file(path, "run file")
    except UserError:
        raise UserError(
            f"{path} is corrupt (not UTF-8 text, or unreadable): move it aside and run the command again; "
            f"the kept experiments stay in git (autonas review {settings.run_id})"
        ) from None


def _checkpoint_count(settings: RunSettings) -> int:
    """How many checkpoints of this run checkpoints.sqlite holds (0 when absent); read only, corrupt is one line."""
    path = settings.run_dir / "checkpoints.sqlite"
    fix = (
        f"the kept experiments stay in git (autonas review {settings.run_id}); start a new run with autonas run "
        "and another --run-id"
    )
    if not path.exists():
        return 0
    if not path.is_file():
        raise UserError(f"{path} is corrupt (not a file), so run {settings.run_id} cannot resume; {fix}")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "checkpoints" not in tables:
                return 0
            return int(
                conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?", (settings.run_id,)).fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise UserError(f"{path} is corrupt ({err}), so run {settings.run_id} cannot resume; {fix}") from None


def _resume_from_start(settings: RunSettings, results: str | None) -> bool:
    """Whether a resume starts the graph from its first step: only where no checkpoint exists and nothing was
    recorded yet (a run killed before its first step finished). Checkpoints lost after experiments were
    recorded cannot be rebuilt: one line naming the file."""
    if _checkpoint_count(settings):
        return False
    runs = settings.workspace / "runs"
    recorded = len([ln for ln in (results or "").splitlines() if ln.strip()]) > 1 or (
        runs.is_dir() and any(runs.iterdir())
    )
    if recorded:
        path = settings.run_dir / "checkpoints.sqlite"
        what = "is missing" if not path.exists() else "holds no checkpoint of this run (truncated?)"
        raise UserError(
            f"{path} {what}, so run {settings.run_id} cannot resume although it recorded experiments; "
            f"the kept experiments stay in git (autonas review {settings.run_id}); start a new run with "
            "autonas run and another --run-id"
        )
    return True


def _check_prompts(folder: Path) -> None:
    """--prompts: a folder holding at least one template this version reads, each UTF-8 text."""
    validate.input_dir(folder, "--prompts")
    names = [f"{name}.txt" for name in FIELDS]
    found = [folder / n for n in names if (folder / n).exists()]
    if not found:
        raise UserError(f"--prompts {folder} holds none of the templates ({', '.join(names)})")
    for path in found:
        validate.text_file(path, "--prompts")


def _drive(agent: ResearchAgent, fresh: bool) -> dict[str, Any]:
    """Run the graph from its start (fresh) or from its last checkpoint; Ctrl-C ends cleanly after the node."""
    from agent.graph import build_graph, graph_config, open_checkpointer
    from sandbox.workspace import WorkspaceError

    settings = agent.s
    try:
        agent.workspace()
    except WorkspaceError as err:
        raise UserError(str(err)) from None
    saver = open_checkpointer(settings.run_dir)
    graph = build_graph(agent).compile(checkpointer=saver)
    # graph_config builds a RunnableConfig as a plain dict (agent/graph.py annotates it dict[str, Any])
    config = cast("RunnableConfig", graph_config(settings.run_id))
    snapshot = graph.get_state(config)
    if not fresh and not snapshot.next:
        if snapshot.values.get("done"):
            raise UserError(f"run {settings.run_id} has finished; its report is {settings.run_dir / 'report.md'}")
    no_llm = agent.planner.client is None and agent.llm_judge is None and settings.planner.provider == "auto"
    no_key = f" (no {' or '.join(KEY_ENV.values())} in the environment, so no LLM is used)" if no_llm else ""
    err_console.print(agent.describe_llms() + no_key, highlight=False)
    try:
        state = graph.invoke(
            {"step": 0, "history": [], "elapsed_s": 0.0, "worker_s": 0.0, "agent_s": 0.0} if fresh else None, config
        )
    except KeyboardInterrupt:
        err_console.print(f"interrupted; state kept. continue with: autonas resume {settings.run_id}", highlight=False)
        raise typer.Exit(130) from None
    except GitTampered as err:  # an editor replaced the workspace's .git: nothing more runs there
        raise UserError(f"{err}; the run's state is kept in {settings.run_dir}") from None
    return state


def _default(field: str) -> Any:
    """An ``autonas run`` option's default: the RunSettings field's, so that it is declared in one place."""
    return field_default(RunSettings, field)


_RUNS_DIR = Path(_default("runs_dir"))  # a module constant: B008 wants no call in an argument default


@user_errors
def run_command(
    goal: Annotated[str, typer.Argument(help='e.g. "find the best Python code model under 8 MB"')],
    budget: Annotated[str, typer.Option(help="wall clock for the whole run: 10m, 8h")] = _default("budget"),
    experiment_budget: Annotated[
        str,
        typer.Option(
            help="training budget of one experiment, in tokens (500ktok, 2Mtok: the "
            "same number whatever the load) or wall clock (60s)"
        ),
    ] = _default("experiment_budget"),
    grace: Annotated[
        str,
        typer.Option(
            help="an experiment still running this long after --budget is killed (workers stop "
            "cleanly at the budget: a partial result is a crash)"
        ),
    ] = _default("grace"),
    max_experiments: Annotated[int | None, typer.Option(min=1)] = _default("max_experiments"),
    max_cost: Annotated[
        float | None, typer.Option(help="USD cap on LLM spend (the offline planner spends none)")
    ] = _default("max_cost_usd"),
    max_gpu_hours: Annotated[float | None, typer.Option()] = _default("max_gpu_hours"),
    search_trials: Annotated[int, typer.Option(min=1)] = _default("search_trials"),
    run_id: Annotated[str | None, typer.Option(help="default: a timestamp")] = None,
    runs_dir: Annotated[Path, typer.Option()] = _RUNS_DIR,
    tokenizer: Annotated[str, typer.Option()] = _default("tokenizer"),
    corpus: Annotated[str, typer.Option()] = _default("corpus"),
    eval_bytes: Annotated[int, typer.Option(min=1, help="bytes of validation text scored")] = _default("eval_bytes"),
    seed: Annotated[int, typer.Option()] = _default("seed"),
    planner: Annotated[
        str, typer.Option(help="auto (a key in the environment picks it, else offline), offline, anthropic, openai")
    ] = field_default(LLMSpec, "provider"),
    planner_model: Annotated[str | None, typer.Option()] = None,
    judge: Annotated[str | None, typer.Option(help="default: the planner's LLM (offline: the metric rule)")] = None,
    judge_model: Annotated[str | None, typer.Option()] = None,
    base_url: Annotated[
        str | None, typer.Option(help="planner server, e.g. http://localhost:8000/v1 for vLLM/llama.cpp/Ollama")
    ] = None,
    judge_base_url: Annotated[str | None, typer.Option()] = None,
    llm_timeout: Annotated[
        float, typer.Option(help="seconds per LLM request (the SDK retries 429/5xx/timeouts)")
    ] = field_default(LLMSpec, "timeout_s"),
    price_in: Annotated[
        float | None, typer.Option(help="USD per million input tokens (overrides the built-in table)")
    ] = None,
    price_out: Annotated[float | None, typer.Option(help="USD per million output tokens")] = None,
    max_plan_attempts: Annotated[int, typer.Option(min=1, max=10)] = _default("max_plan_attempts"),
    prompts: Annotated[Path | None, typer.Option(help="folder of prompt templates overriding prompts/*.txt")] = None,
    memory_mb: Annotated[
        int | None, typer.Option(min=64, help="address-space limit of each worker process")
    ] = _default("memory_mb"),
    editor: Annotated[
        str,
        typer.Option(
            help="code editor for plans that change code: builtin, claude-code, gui, or a "
            "fallback chain such as claude-code,gui"
        ),
    ] = ",".join(_default("editors")),
    claude_binary: Annotated[
        str | None, typer.Option(help="the claude CLI (default: on PATH, else claude-agent-sdk's)")
    ] = _default("claude_binary"),
    claude_model: Annotated[str | None, typer.Option(help="model for Claude Code (default: the CLI's own)")] = _default(
        "claude_model"
    ),
    editor_max_turns: Annotated[int, typer.Option(min=1, max=500)] = _default("editor_max_turns"),
    editor_timeout: Annotated[str, typer.Option(help="wall clock of one code edit")] = _default("editor_timeout"),
) -> None:
    """Start a research run: plan, edit, run, judge and commit experiments until the budget is spent."""
    # The options are declared once, here (their defaults are RunSettings'); RunSettings is built once below.
    from agent.editing import editor_warnings, parse_editors
    from agent.graph import ResearchAgent
    from sandbox.workspace import Workspace, WorkspaceError

    # Everything a user can get wrong is checked before anything is created.
    parse_goal(goal)
    validate.seed(seed)
    validate.number(eval_bytes, "--eval-bytes", le=10**11)
    validate.number(max_experiments, "--max-experiments", le=1_000_000)
    validate.number(max_cost, "--max-cost", ge=0, le=1_000_000)
    validate.number(max_gpu_hours, "--max-gpu-hours", gt=0, le=1_000_000)
    validate.number(search_trials, "--search-trials", le=100_000)
    validate.number(llm_timeout, "--llm-timeout", gt=0, le=3600)
    validate.number(price_in, "--price-in", ge=0, le=100_000)
    validate.number(price_out, "--price-out", ge=0, le=100_000)
    validate.number(memory_mb, "--memory-mb", le=1 << 24)
    validate.corpus(corpus)
    if prompts is not None:
        _check_prompts(prompts)
    validate.output_dir(runs_dir, "--runs-dir", results=())
    parse_tokenizer_spec(tokenizer)
    editors = parse_editors(editor)
    run_id = _check_run_id(run_id or time.strftime("%Y%m%d-%H%M%S"))
    settings = RunSettings(
        run_id=run_id,
        goal=goal,
        runs_dir=str(runs_dir),
        budget=budget,  # budgets are read here
        experiment_budget=experiment_budget,
        grace=grace,
        max_experiments=max_experiments,
        max_cost_usd=max_cost,
        max_gpu_hours=max_gpu_hours,
        search_trials=search_trials,
        tokenizer=tokenizer,
        corpus=corpus,
        eval_bytes=eval_bytes,
        seed=seed,
        planner=_llm_spec(planner, planner_model, base_url, llm_timeout, price_in, price_out),
        judge=(
            LLMSpec()
            if judge is None and judge_model is None and judge_base_url is None
            else _llm_spec(judge or planner, judge_model, judge_base_url, llm_timeout, price_in, price_out)
        ),
        max_plan_attempts=max_plan_attempts,
        prompts_dir=str(prompts.resolve()) if prompts else None,
        memory_mb=memory_mb,
        editors=editors,
        claude_binary=claude_binary,
        claude_model=claude_model,
        editor_max_turns=editor_max_turns,
        editor_timeout=editor_timeout,
    )
    if settings.run_dir.exists():
        raise UserError(
            f"run {run_id!r} already exists in {runs_dir}: resume it with `autonas resume {run_id}` "
            "or pick another --run-id"
        )
    record = settings.model_dump_json(indent=2)  # fails here, before anything exists, if a value cannot be stored
    agent = ResearchAgent(settings)  # keys, servers and prompt templates are checked before anything is created
    try:
        settings.run_dir.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"cannot create {settings.run_dir}: {err.strerror or err}") from None
    try:
        ws = Workspace.create(settings.workspace, run_id)
        if settings.code_editing:  # the editors change this copy; the workers run it
            ws.seed_code(model_code_files())
        (settings.run_dir / "run.json").write_text(record)
    except (WorkspaceError, OSError) as err:  # no half-made run is left behind: this command made the folder
        shutil.rmtree(settings.run_dir, ignore_errors=True)
        raise UserError(
            f"cannot set up run {run_id} in {settings.run_dir}: {getattr(err, 'strerror', None) or err}"
        ) from None
    err_console.print(f"run {run_id}: {goal!r}, budget {budget}, folder {settings.run_dir}", highlight=False)
    for warning in editor_warnings(settings):
        err_console.print(f"warning: {warning}; code changes fall to the next editor or fail", highlight=False)
    state = _drive(agent, fresh=True)
    _summary(settings, state)


def _llm_spec(
    provider: str,
    model: str | None,
    base_url: str | None,
    timeout: float,
    price_in: float | None,
    price_out: float | None,
) -> LLMSpec:

    if provider not in PROVIDERS:
        raise UserError(f"unknown LLM provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    if (price_in is None) != (price_out is None):
        raise UserError("give both --price-in and --price-out, or neither")
    validate.url(base_url, "server URL")
    return LLMSpec(
        provider=provider, model=model, base_url=base_url, timeout_s=timeout, price_in=price_in, price_out=price_out
    )


@user_errors
def resume_command(
    run_id: Annotated[str, typer.Argument()],
    runs_dir: Annotated[Path, typer.Option()] = Path("runs"),
) -> None:
    """Continue a run from its last finished node (after a crash, Ctrl-C or kill -9)."""
    from agent.graph import ResearchAgent

    settings = _load_settings(run_id, runs_dir)
    results = _read_state_text(settings.workspace / "results.tsv", settings)
    _read_state_text(settings.run_dir / "llm_calls.jsonl", settings)
    from_start = _resume_from_start(settings, results)
    agent = ResearchAgent(settings)
    (settings.run_dir / "STOP").unlink(missing_ok=True)
    if from_start:
        err_console.print(
            f"run {run_id} has no checkpoint yet (killed before its first step): starting it from the beginning",
            highlight=False,
        )
    state = _drive(agent, fresh=from_start)
    _summary(settings, state)


def _summary(settings: RunSettings, state: dict[str, Any]) -> None:
    hist = state.get("history", [])
    inc = state.get("incumbent")
    console.print(
        f"{len(hist)} experiments, {sum(h.decision == 'keep' for h in hist)} kept; "
        f"best val bpb {inc.val_bpb:.4f} ({inc.id})"
        if inc
        else f"{len(hist)} experiments, none kept",
        highlight=False,
    )
    console.print(f"report: {settings.run_dir / 'report.md'}", highlight=False)


@user_errors
def status_command(
    run_id: Annotated[str, typer.Argument()], runs_dir: Annotated[Path, typer.Option()] = Path("runs")
) -> None:
    """Where a run stands (works while it runs)."""
    settings = _load_settings(run_id, runs_dir)
    text = _read_state_text(settings.workspace / "results.tsv", settings)
    _read_state_text(settings.run_dir / "llm_calls.jsonl", settings)
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t")) if text is not None else []
    table = Table(title=f"run {run_id}: {settings.goal}")
    for col in ("experiment", "kind", "decision", "val_bpb", "size_bytes_int8", "delta_bpb", "arch"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *(
                r.get(c, "")
                for c in ("experiment", "kind", "decision", "val_bpb", "size_bytes_int8", "delta_bpb", "arch")
            )
        )
    console.print(table)
    summary = settings.run_dir / "summary.json"
    state = (
        "finished"
        if summary.is_file()
        else ("stopping (STOP file)" if (settings.run_dir / "STOP").exists() else "running or interrupted")
    )
    console.print(f"{len(rows)} experiments recorded; {state}", highlight=False)
    calls = settings.run_dir / "llm_calls.jsonl"
    if calls.is_file():
        ledger = CostLedger(calls)
        tin, tout = ledger.tokens
        cap = f" of ${settings.max_cost_usd:g}" if settings.max_cost_usd is not None else ""
        console.print(
            f"LLM: {len(ledger.records)} calls, {tin:,} in / {tout:,} out tokens, ${ledger.total_usd:.4f}{cap}",
            highlight=False,
        )


@user_errors
def review_command(
    run_id: Annotated[str, typer.Argument()], runs_dir: Annotated[Path, typer.Option()] = Path("runs")
) -> None:
    """The agent's commits with their metric deltas against the previous best."""
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
        if bpb is not None and e.trailers.get("kind") in ("train", "distill"):
            best = bpb if best is None else min(best, bpb)
        size = f"{float(e.trailers['size-int8-bytes']) / 1e6:.3f}" if "size-int8-bytes" in e.trailers else ""
        table.add_row(
            e.sha[:10], e.trailers.get("experiment", ""), f"{bpb:.4f}" if bpb is not None else "", delta, size, e.title
        )
    console.print(table)
    discarded = ws.discarded_refs()
    if discarded:
        console.print(
            f"{len(discarded)} discarded experiments kept as refs: " + ", ".join(sorted(discarded)), highlight=False
        )


@user_errors
def reproduce_command(
    run_id: Annotated[str, typer.Argument(help="the run")],
    experiment: Annotated[str, typer.Argument(help="a kept experiment id (e003) or a commit prefix")],
    runs_dir: Annotated[Path, typer.Option()] = Path("runs"),
) -> None:
    """Re-make a kept result from its commit and compare it with the recorded number and the run's noise margin."""
    from agent.reproduce import reproduce
    from sandbox.workspace import Workspace, WorkspaceError

    settings = _load_settings(run_id, runs_dir)
    try:
        ws = Workspace.open(settings.workspace, run_id)
    except WorkspaceError as err:
        raise UserError(str(err)) from None
    with err_console.status(f"re-making {experiment} of {run_id} ..."):
        r = reproduce(settings, ws, experiment)
    table = Table(title=f"{r.experiment} of {run_id} (commit {r.commit[:10]})", show_header=False)
    table.add_row("command", r.command)
    table.add_row("recorded val bpb", f"{r.recorded_bpb:.6f}")
    table.add_row("re-made val bpb", f"{r.remade_bpb:.6f}" if r.remade_bpb is not None else f"failed: {r.fail_reason}")
    table.add_row("difference", f"{r.delta:+.6f}" if r.delta is not None else "")
    table.add_row(
        "noise margin",
        f"±{r.margin_bpb:.6f} (2 x {'measured' if r.noise_measured else 'floor'} noise {r.noise_bpb:.6f})",
    )
    table.add_row("verdict", "reproduced: within the noise margin" if r.inside else "NOT reproduced")
    table.add_row("folder", r.out_dir)
    console.print(table)
    if not r.inside:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
    app.command("status")(status_command)
    app.command("review")(review_command)
    app.command("reproduce")(reproduce_command)
