"""The research loop as a LangGraph ``StateGraph``: plan -> edit -> run -> judge -> record, looping until a
budget is spent, then report. Checkpointed after every node in ``RUN/checkpoints.sqlite`` so that
``autonas resume`` after a crash, Ctrl-C or SIGKILL continues from the last finished node. ``record`` is
idempotent (it looks for the experiment's commit and results row before writing), so a node re-run after a
kill never commits an experiment twice.

The nodes are the methods of :class:`ResearchAgent`, which holds what a checkpoint must not (workspace, planner,
LLM clients); the state they read and write is :class:`agent.state.AgentState`. Everything that depends on a plan's
kind is the plan's own (:mod:`agent.plans`).
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from rich.markup import escape

from agent.confining import experiment_confinement, harness_scored, prepare_shared_cache, trusted_scoring
from agent.editing import apply_code_change, edit_summary, worker_env
from agent.edits import EditSummary
from agent.goal import Goal, parse_goal
from agent.judge import Verdict, judge, noise_estimate, settle_latency
from agent.limits import MIN_EXPERIMENT_S, experiment_limits, shortest_experiment_s, stop_reason
from agent.llm import CallRecord, CostLedger, judge_spec, make_client
from agent.llm_judge import LLMJudge
from agent.offline import OfflinePlanner
from agent.planner import Planner, PlanOutcome
from agent.plans import AnyPlan, EvalPlan, PlanContext, WorkerSetup
from agent.progress import PROGRESS
from agent.prompting import Prompts
from agent.remeasure import remeasure_latency
from agent.repeats import scheduled_repeat
from agent.report import write_report
from agent.reproduce import COMMAND_FILE, WorkerCommand, stored_command
from agent.results import append_result, metric_trailers, provenance_trailers
from agent.settings import RunSettings
from agent.state import (
    CHECKPOINT_TYPES,
    AgentState,
    HistoryEntry,
    current_edit,
    model_runs,
    noise_margin,
    refuse_old_state,
    resolve_model_ref,
)
from ccaa.editor import BuiltinEditor, EditInstruction
from harness.data import CorpusSpec, prepare_corpus
from harness.errors import UserError
from harness.model_code import code_files, stamp_commit, write_code_record
from harness.run_files import METRICS_FILE, MissingRunFile, RunFileError, RunMetrics, read_metrics
from harness.tokenizer import parse_tokenizer_spec
from sandbox.confine import ConfinementUnavailable
from sandbox.environment import WORKER, child_env
from sandbox.runner import run_limited
from sandbox.safe_files import UnsafeFile, copy_regular
from sandbox.workspace import Workspace

RECURSION_LIMIT = 1_000_000  # set explicitly: LangGraph's default changed between 1.x releases
NODES = ("plan", "edit", "run", "judge", "record", "report")
FIRST_SCORING_S = 40.0  # the scoring time assumed before the first model is scored (its reserve: 1.5 x, 60 s)


class ResearchAgent:
    """Holds what nodes need but a checkpoint must not: the workspace, the planner, the settings, the LLM
    clients and their cost ledger (a file, so the spend survives kills)."""

    def __init__(self, settings: RunSettings, env: dict[str, str] | None = None):
        self.s = settings
        self.goal: Goal = parse_goal(settings.goal)
        _, self.vocab = parse_tokenizer_spec(settings.tokenizer)
        self.run_dir = settings.run_dir
        self.prompts = Prompts(Path(settings.prompts_dir) if settings.prompts_dir else None)
        self.ledger = CostLedger(self.run_dir / "llm_calls.jsonl")
        planner_client = make_client(settings.planner, "planner", env)
        judge_client = make_client(judge_spec(settings.planner, settings.judge, env), "judge", env)
        if settings.max_cost_usd is not None:
            for client in (planner_client, judge_client):
                if client and client.spec.price(client.model) is None:
                    raise UserError(
                        f"no price known for model {client.model!r}, so --max-cost cannot be enforced: "
                        "give --price-in and --price-out (USD per million tokens)"
                    )
        offline = OfflinePlanner(
            self.goal, self.vocab, settings.experiment_budget, settings.search_trials, settings.seed
        )
        self.planner = Planner(
            self.goal,
            offline,
            settings.tokenizer,
            settings.experiment_budget,
            self.prompts,
            planner_client,
            self.ledger,
            settings.max_plan_attempts,
            settings.max_cost_usd,
        )
        self.llm_judge = (
            LLMJudge(self.goal, judge_client, self.ledger, self.prompts, max_cost_usd=settings.max_cost_usd)
            if judge_client
            else None
        )
        self._ws: Workspace | None = None
        self._scoring_s: float | None = None  # the slowest harness scoring of a model so far (not checkpointed)
        self._corpus_fingerprint: str | None = None

    def describe_llms(self) -> str:
        judge = self.llm_judge.describe() if self.llm_judge else "metric rule with measured noise"
        return f"planner: {self.planner.describe()}; judge: {judge}"

    # -------------------------------------------------------------------------------------- nodes

    @staticmethod
    def _timed(started: float, worker_s: float = 0.0) -> dict[str, float]:
        """This node's seconds (the state's reducers add them to the run's totals)."""
        dt = time.monotonic() - started
        return {"elapsed_s": dt, "agent_s": dt - worker_s, "worker_s": worker_s}

    def plan(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        reason = stop_reason(self.s, state, self.ledger, self.run_dir)
        if reason:
            PROGRESS.print(f"[bold]stopped:[/] {escape(reason)}")
            return {"done": True, "stop_reason": reason, **self._timed(t0)}
        history = state.get("history", [])
        repeat = scheduled_repeat(history)  # the loop's own repeats come before any planner's idea
        outcome = (
            PlanOutcome(
                repeat,
                "rule",
                ["the loop re-runs a close call / measures noise with another seed before anything else"],
            )
            if repeat is not None
            else self.planner.propose(history, state.get("incumbent"), state.get("noise"), self._plan_context(state))
        )
        plan = outcome.plan
        cannot = self._cannot_finish(plan, state)
        if cannot:
            PROGRESS.print(f"[bold]stopped:[/] {escape(cannot)}")
            return {"done": True, "stop_reason": cannot, **self._timed(t0)}
        exp_id = f"e{state.get('step', 0) + 1:03d}"
        notes = "".join(f"- {n}\n" for n in outcome.notes)
        self._journal(f"## {exp_id}: {plan.kind} (planned by {outcome.source})\n\n{notes}{plan.rationale}\n")
        PROGRESS.print(
            f"[bold]{exp_id}[/] {escape(plan.title())} [dim](planner: {outcome.source}, "
            f"{state.get('elapsed_s', 0.0):.0f}s of {self.s.budget_s:.0f}s used)[/]"
        )
        return {
            "plan": plan,
            "plan_source": outcome.source,
            "exp_id": exp_id,
            "metrics": None,
            "verdict": None,
            "edit": None,
            **self._timed(t0),
        }

    def _plan_context(self, state: AgentState) -> PlanContext:
        g = self.goal
        return PlanContext(
            vocab_size=self.vocab,
            max_mb=g.max_mb,
            max_params=g.max_params,
            max_latency_ms=g.max_latency_ms,
            time_left_s=self.s.budget_s - state.get("elapsed_s", 0.0),
            experiment_budget=self.s.experiment_budget,
            models=tuple(model_runs(state.get("history", []))),
            has_incumbent=state.get("incumbent") is not None,
            code_editing=self.s.code_editing,
        )

    def edit(self, state: AgentState) -> dict[str, Any]:
        """The plan's configuration goes in through the built-in editor; a plan's code change through the configured
        editor chain (or a replay of the same change made earlier). A failed edit leaves the tree as it was and the
        experiment fails in the run node; the run goes on."""
        t0 = time.monotonic()
        ws = self.workspace()
        plan, exp_id = state["plan"], state["exp_id"]
        assert plan is not None and exp_id is not None
        if ws.has_changes():  # an edit of this experiment that a kill interrupted: start it again from the last commit
            ws.reset_tree()
        # our own exact files, refused outside the workspace: no watch on the run folder, where the checkpointer may be
        # writing the previous step in the background (a false "wrote outside the workspace")
        configs = BuiltinEditor(watch=()).edit(ws.root, EditInstruction(files=plan.config_files(exp_id)))
        if not configs.ok:
            return {
                "edit": EditSummary(ok=False, editor="builtin", error=f"builtin: {configs.error}"),
                **self._timed(t0),
            }
        if not plan.code_change:
            return {"edit": None, **self._timed(t0)}
        log_dir = ws.root / "runs" / exp_id / "edit"
        results = apply_code_change(
            self.s, self.prompts, plan, exp_id, plan.title(), ws.root, log_dir, state.get("history", [])
        )
        summary = edit_summary(results, log_dir)
        for r in results:
            PROGRESS.print(f"     [dim]edit:[/] {escape(r.summary())}")
            if r.editor in ("claude-code", "gui"):  # LLM editors; the built-in one and patch replays cost nothing
                self.ledger.add(
                    CallRecord(
                        role="editor",
                        provider=r.editor,
                        model=self.s.claude_model or r.editor,
                        input_tokens=0,
                        output_tokens=0,
                        cost_usd=r.cost_usd if r.editor == "claude-code" else None,
                        seconds=r.wall_s,
                        ok=r.ok,
                        note=(r.error or f"{len(r.files_changed)} file(s)")[:200],
                    )
                )
        self._journal(
            "Code change: "
            + plan.code_change
            + "\n\n"
            + "".join(
                f"- {r.summary()}" + (f" (transcript {r.transcript})" if r.transcript else "") + "\n" for r in results
            )
        )
        return {"edit": summary, **self._timed(t0)}

    def _scoring_reserve_s(self) -> float:
        """Time kept for the harness's scoring of a model: 1.5 x the slowest scoring so far (60 s before the first)."""
        return 1.5 * (self._scoring_s if self._scoring_s is not None else FIRST_SCORING_S)

    def _limits(self, plan: AnyPlan, out: Path, state: AgentState) -> tuple[list[str], float, float]:
        """The worker's command (without its cap), its timeout and its wall cap (UserError: e.g. a missing teacher)."""
        setup = WorkerSetup(
            tokenizer=self.s.tokenizer,
            corpus=self.s.corpus,
            eval_bytes=self.s.eval_bytes,
            resolve_model=lambda ref: resolve_model_ref(ref, state),
        )
        cmd, own_s = plan.worker_command(setup, out)
        timeout, cap = experiment_limits(
            self.s, own_s, state.get("elapsed_s", 0.0), self._scoring_reserve_s() if plan.is_model else 0.0
        )
        return cmd, timeout, cap

    def _command(self, plan: AnyPlan, out: Path, state: AgentState) -> tuple[list[str], float]:
        """The worker's command, told to stop at the run's wall cap, and its timeout."""
        cmd, timeout, cap = self._limits(plan, out, state)
        return plan.with_wall_cap(cmd, cap), timeout

    def _cannot_finish(self, plan: AnyPlan, state: AgentState) -> str | None:
        """Why ``plan`` would only end as a crash at its wall cap (None: it can finish). The stop rule before planning
        knows the time left but not the plan: a model experiment's cap also leaves the harness's scoring its reserve
        (60 s before the first scoring), so with 45 s left a training got a 1 s cap and crashed."""
        try:
            _, _, cap = self._limits(plan, Path("runs") / "next", state)
        except UserError:
            return None  # the run node reports it as the experiment's failure
        # a search ends by its cap with what it found: only a worker's start-up and one evaluation must fit
        least, measured = (
            (MIN_EXPERIMENT_S, False)
            if plan.ends_by_its_cap
            else shortest_experiment_s(state.get("history", []), plan.kind)
        )
        if cap >= least:
            return None
        left = max(self.s.budget_s - state.get("elapsed_s", 0.0), 0.0)
        reserve = f" after the scoring reserve of {self._scoring_reserve_s():.0f} s" if plan.is_model else ""
        what = f"the shortest {plan.kind} experiment so far" if measured else "a worker's start-up and one evaluation"
        return (
            f"{left:.0f} s left: a {plan.kind} experiment would get a {cap:.0f} s cap{reserve}, "
            f"shorter than {what} ({least:.0f} s)"
        )

    def run(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        ws = self.workspace()
        plan, exp_id = state["plan"], state["exp_id"]
        assert plan is not None and exp_id is not None
        out = Path("runs") / exp_id  # relative to the workspace, ignored by git
        (ws.root / out).mkdir(parents=True, exist_ok=True)

        def crashed(fail_reason: str) -> dict[str, Any]:  # the experiment crashes with the reason, the run goes on
            return {
                "metrics": RunMetrics.failure("crashed", fail_reason).flat(),
                "run_dir": str(ws.root / out),
                "exp_worker_s": 0.0,
                **self._timed(t0),
            }

        edit = current_edit(state)
        if edit and not edit.ok:
            return crashed(f"edit failed: {edit.error}")
        try:
            cmd, timeout = self._command(plan, out, state)
        except UserError as err:  # e.g. the teacher's run folder is gone
            return crashed(str(err))
        cmd += plan.continuation(ws.root / out)
        log = ws.root / out / "worker.log"
        try:
            if ws.has_code():
                code_files(ws.root)  # a workspace whose nas/ would replace fixed code is refused before anything runs
            confinement = experiment_confinement(ws, self.s, out)
            if confinement is not None:
                prepare_shared_cache(self.s)
            outcome = run_limited(
                cmd,
                ws.root,
                log,
                timeout_s=timeout,
                memory_mb=self.s.memory_mb,
                env=experiment_env(ws),
                confinement=confinement,
            )
        except (ConfinementUnavailable, UserError) as err:
            return crashed(str(err))
        # what re-makes this result, written by us after the worker is gone (its own copies are not trusted)
        stored_command(cmd, out, timeout, ws.has_code()).save(ws.root / out)
        if plan.is_model and (ws.root / out / "model.safetensors").is_file():
            write_code_record(ws.root / out, ws.root if ws.has_code() else None, commit=ws.repo.head.commit.hexsha)
        metrics_path = ws.root / out / METRICS_FILE
        try:
            if isinstance(plan, EvalPlan):  # only numbers the installed harness wrote, outside the workspace, count
                scoring = (self.run_dir / "scoring" / exp_id).absolute()  # the scorer's working folder is the workspace
                metrics_path = scoring / METRICS_FILE
                if outcome.ok:
                    score_cmd, score_env = trusted_scoring(plan.config.limit, ws.root / out, scoring)
                    scored = run_limited(
                        score_cmd,
                        ws.root,
                        scoring / "score.log",
                        timeout_s=max(1.0, timeout - outcome.wall_s),
                        memory_mb=self.s.memory_mb,
                        env=score_env,
                    )
                    outcome = replace(scored, wall_s=outcome.wall_s + scored.wall_s)
                    for name in ("metrics.json", "samples.jsonl_results.jsonl"):  # the numbers beside the samples
                        copy_regular(scoring / name, ws.root / out / name, 256 * 2**20)  # replaces whatever stood there
            # parsed and checked once, here; the judge, the record and the report see its flat dict
            metrics = read_metrics(metrics_path).flat() if outcome.ok or not isinstance(plan, EvalPlan) else None
        except MissingRunFile:
            metrics = None
        except (
            UnsafeFile,
            RunFileError,
        ) as err:  # a link, a FIFO, a huge, malformed or nested file: its experiment fails
            metrics = RunMetrics.failure("crashed", str(err)).flat()
        if metrics is None:
            metrics = RunMetrics.failure(
                "crashed",
                ("timed out" if outcome.timed_out else f"exit code {outcome.returncode}")
                + f"; see {out / 'worker.log'}",
            ).flat()
        if plan.is_model and metrics.get("status") == "ok" and isinstance(metrics.get("val_bpb"), float):
            left = timeout - (time.monotonic() - t0)  # scoring is part of the experiment: the worker's cap left it time
            metrics, scoring_s = harness_scored(
                self.s,
                metrics,
                ws.root / out,
                (self.run_dir / "scoring" / exp_id).absolute(),
                max(left, self._scoring_reserve_s()),
            )
            if scoring_s is not None:
                self._scoring_s = max(self._scoring_s or 0.0, scoring_s)
        return {
            "metrics": metrics,
            "run_dir": str(ws.root / out),
            "exp_worker_s": outcome.wall_s,
            **self._timed(t0, worker_s=outcome.wall_s),
        }

    def judge(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        plan, metrics = state["plan"], state.get("metrics")
        assert plan is not None
        settled = plan.settled_verdict(metrics)
        if settled is not None:  # a kind the metric rule does not judge (search, eval, compress)
            return {"verdict": settled, **self._timed(t0)}
        if plan.is_model and metrics and metrics.get("status") == "ok":
            metrics = settle_latency(self.goal.max_latency_ms, metrics, self._remeasurer(state))
        key = plan.group_key()
        groups: dict[str, list[float]] = {}
        for h in state.get("history", []):
            if h.plan.is_model and isinstance(h.val_bpb, float):
                groups.setdefault(h.plan.group_key(), []).append(h.val_bpb)
        bpb = (metrics or {}).get("val_bpb")
        same = list(groups.get(key, []))  # the earlier runs of this config (a copy: the current one is appended below)
        if isinstance(bpb, float):
            groups.setdefault(key, []).append(bpb)
        noise = noise_estimate(list(groups.values()))
        incumbent = state.get("incumbent")
        inc_key = incumbent.plan.group_key() if incumbent else None
        if (
            incumbent and key == inc_key and isinstance(bpb, float)
        ):  # a repeat of the incumbent only measures noise (a crash is a crash)
            verdict = Verdict(
                decision="repeat",
                reason="repeat of the incumbent with another seed (noise measurement)",
                metric=bpb,
                noise=noise,
            )
            return {"verdict": verdict, "noise": noise, "metrics": metrics, **self._timed(t0)}
        inc_bpb = statistics.fmean(groups[inc_key]) if inc_key in groups else None
        candidate = dict(metrics or {})
        if isinstance(bpb, float):
            candidate["val_bpb"] = statistics.fmean(groups[key])  # the mean of this config's repeats decides
        v = judge(self.goal, candidate, inc_bpb, noise, repeats=len(same) + 1)
        if self.llm_judge is not None:
            notes: list[str] = []
            v = self.llm_judge.review(v, state["exp_id"] or "", plan, metrics or {}, incumbent, len(same) + 1, notes)
            if notes:
                self._journal("".join(f"- {n}\n" for n in notes))
        return {"verdict": v, "noise": noise, "metrics": metrics, **self._timed(t0)}

    def _remeasurer(self, state: AgentState) -> Callable[[int], dict[str, Any] | None]:
        """Fresh latency sessions of this experiment's saved model, timed like its worker (see agent.remeasure)."""
        ws, exp_id = self.workspace(), state["exp_id"]
        assert exp_id is not None
        device = str((state.get("metrics") or {}).get("latency_device", "cpu"))
        out = Path("runs") / exp_id  # relative to the workspace, as for the worker
        return lambda attempt: remeasure_latency(
            ws,
            out,
            device,
            attempt,
            self.s.memory_mb,
            experiment_env(ws),
            lambda: experiment_confinement(ws, self.s, out),
        )

    def record(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        ws = self.workspace()
        plan, exp_id, verdict, metrics = state["plan"], state["exp_id"], state["verdict"], state.get("metrics") or {}
        assert plan is not None and exp_id is not None and verdict is not None
        decision = verdict.decision
        commit = ""
        if decision == "keep":
            commit = self._commit(state, plan, exp_id, verdict, metrics)
        else:
            ws.discard(exp_id, plan.title())
        noise, noise_source = noise_margin(verdict, state)
        entry = HistoryEntry(
            id=exp_id,
            plan=plan,
            planner=state.get("plan_source") or "offline",
            decision=decision,
            reason=verdict.reason,
            commit=commit,
            edit=current_edit(state),
            run_dir=state.get("run_dir"),
            worker_s=state.get("exp_worker_s"),
            val_bpb=metrics.get("val_bpb") if isinstance(metrics.get("val_bpb"), float) else None,
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            noise_bpb=noise,
            noise_source=noise_source,
        )
        append_result(self.s.workspace / "results.tsv", entry, verdict)
        self._journal(f"**{decision}**: {verdict.reason}" + (f" (commit {commit[:10]})" if commit else "") + "\n")
        bpb = entry.val_bpb
        PROGRESS.print(
            f"     {decision}"
            + (f", val bpb {bpb:.4f}" if bpb is not None else "")
            + f": {escape(verdict.reason)}"
            + (f" [green](commit {commit[:10]})[/]" if commit else "")
        )
        update: dict[str, Any] = {"history": [entry], "step": state.get("step", 0) + 1}
        if decision == "keep" and plan.is_model:
            update["incumbent"] = entry
        return {**update, **self._timed(t0)}

    def _commit(self, state: AgentState, plan: AnyPlan, exp_id: str, verdict: Verdict, metrics: dict[str, Any]) -> str:
        """The kept experiment's commit, made once: a re-run of the record node after a kill finds it."""
        ws = self.workspace()
        done = next((e.sha for e in ws.experiments() if e.trailers.get("experiment") == exp_id), None)
        if done is not None:
            return done
        trailers: dict[str, Any] = {"experiment": exp_id, "kind": plan.kind, **metric_trailers(metrics)}
        if plan.is_model:
            trailers.update(provenance_trailers(plan, state.get("run_dir"), metrics, self._corpus()))
        if verdict.delta is not None:
            trailers["delta-bpb"] = verdict.delta
        trailers["noise-bpb"], trailers["noise-source"] = noise_margin(verdict, state)
        body = f"{plan.rationale}\n\nJudge: {verdict.reason}"
        run_dir = state.get("run_dir")
        if run_dir and (Path(run_dir) / COMMAND_FILE).is_file():
            body += f"\n\nCommand: {WorkerCommand.load(Path(run_dir)).display()}"
        edit = current_edit(state)
        if edit and edit.ok:
            body += f"\n\nCode change ({edit.editor}): {plan.code_change}\nFiles: {', '.join(edit.files)}"
            trailers["editor"] = edit.editor
            if edit.cost_usd:
                trailers["edit-cost-usd"] = edit.cost_usd
        commit = ws.commit_experiment(plan.title(), body, trailers)
        if run_dir and plan.is_model:
            stamp_commit(Path(run_dir), commit)
        return commit

    def report(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        write_report(self.s, self.ledger, self.describe_llms(), state)
        return {"done": True, **self._timed(t0)}

    # -------------------------------------------------------------------------------------- helpers

    def _corpus(self) -> str:
        """The run corpus's fingerprint (computed once: it reads the whole token cache)."""
        if self._corpus_fingerprint is None:
            self._corpus_fingerprint = prepare_corpus(
                CorpusSpec(source=self.s.corpus), self.s.tokenizer
            ).corpus_fingerprint
        return self._corpus_fingerprint

    def workspace(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.open(self.s.workspace, self.s.run_id)
            if self._ws.carries_whole_package():
                raise UserError(
                    f"workspace {self._ws.root} was made by an older version (it carries the whole nas package, "
                    "its measurement included): start a new run"
                )
            # a kill during an edit leaves the editor's change in the tree: it is the agent's, and the edit node
            # redoes it
            self._ws.ensure_clean_except_agent(("configs/", "nas/") if self._ws.has_code() else ("configs/",))
        return self._ws

    def _journal(self, text: str) -> None:
        with open(self.s.workspace / "journal.md", "a") as fh:
            fh.write(text + "\n")


def experiment_env(ws: Workspace) -> dict[str, str]:
    """A worker's whole environment: the allow-listed worker settings of this process (no keys: no worker the
    agent starts talks to an LLM), unbuffered output, and the workspace's code first on the import path."""
    return worker_env(ws.has_code(), ws.root, child_env(WORKER, {"PYTHONUNBUFFERED": "1"}))


def _route_after_plan(state: AgentState) -> str:
    return "report" if state.get("done") else "edit"


class _GraphNode(Protocol):
    """A node as langgraph's ``add_node`` types it: its parameter is named ``state`` (a plain ``Callable`` has a
    positional-only one, which mypy does not match against langgraph's node protocols)."""

    def __call__(self, state: AgentState) -> dict[str, Any]: ...


def _checked(node: Callable[[AgentState], dict[str, Any]], run_id: str) -> _GraphNode:
    """The node, refusing (in one line) a state checkpointed by an older version before it reads it."""

    def checked(state: AgentState) -> dict[str, Any]:
        refuse_old_state(state, run_id)
        return node(state)

    return checked


def build_graph(agent: ResearchAgent) -> StateGraph:
    g = StateGraph(AgentState)
    for name in NODES:
        g.add_node(name, _checked(getattr(agent, name), agent.s.run_id))
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", _route_after_plan, {"edit": "edit", "report": "report"})
    g.add_edge("edit", "run")
    g.add_edge("run", "judge")
    g.add_edge("judge", "record")
    g.add_edge("record", "plan")
    g.add_edge("report", END)
    return g


def open_checkpointer(run_dir: Path) -> SqliteSaver:
    """The run's checkpoint database, with the state's pydantic classes registered with the serializer (it rebuilds
    only registered classes without a warning, and refuses others in strict mode)."""
    conn = sqlite3.connect(str(run_dir / "checkpoints.sqlite"), check_same_thread=False)
    return SqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=CHECKPOINT_TYPES))


def graph_config(run_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": run_id}, "recursion_limit": RECURSION_LIMIT}
