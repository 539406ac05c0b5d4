"""The research loop as a LangGraph ``StateGraph``: plan -> edit -> run -> judge -> record, looping until a
budget is spent, then report. Checkpointed after every node in ``RUN/checkpoints.sqlite`` so that
``autonas resume`` after a crash, Ctrl-C or SIGKILL continues from the last finished node. ``record`` is
idempotent (it looks for the experiment's commit and results row before writing), so a node re-run after a
kill never commits an experiment twice.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sqlite3
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from rich.console import Console
from rich.markup import escape

from agent.confining import experiment_confinement, prepare_shared_cache, score_model, trusted_scoring
from agent.goal import Goal, parse_goal
from agent.editing import apply_code_change, config_files, edit_summary, worker_env
from agent.judge import MIN_NOISE, judge, noise_estimate, settle_latency
from agent.llm import CallRecord, CostLedger, judge_spec, make_client
from agent.llm_judge import LLMJudge
from agent.offline import OfflinePlanner, group_key
from agent.planner import PlanOutcome, Planner
from agent.plans import MODEL_KINDS, PlanContext
from agent.prompting import Prompts
from agent.remeasure import TIMEOUT_S as REMEASURE_TIMEOUT_S, remeasure_command
from agent.repeats import scheduled_repeat
from agent.reproduce import COMMAND_FILE, WorkerCommand, stored_command
from agent.settings import RunSettings
from harness.budget import parse_budget
from harness.errors import UserError
from harness.run_files import METRICS_FILE, MissingRunFile, RunFileError, RunMetrics, read_metrics
from harness.scoring import ScoringRefused
from harness.model_code import CODE_DIR, CODE_RECORD, code_files, read_code_record, stamp_commit, write_code_record
from ccaa.editor import BuiltinEditor, EditInstruction
from sandbox.confine import ConfinementUnavailable
from sandbox.environment import WORKER, child_env
from sandbox.runner import run_limited
from sandbox.safe_files import UnsafeFile, copy_regular, read_json_object, remove
from sandbox.workspace import Workspace

PROGRESS = Console(stderr=True, highlight=False)
RECURSION_LIMIT = 1_000_000  # set explicitly: LangGraph's default changed between 1.x releases
RESULT_COLUMNS = ["experiment", "commit", "kind", "decision", "val_bpb", "size_bytes_int8", "latency_ms_p50", "params",
                  "delta_bpb", "noise_bpb", "seed", "arch", "rationale", "reason", "planner", "noise_source"]


class AgentState(TypedDict, total=False):
    step: int
    plan: dict[str, Any] | None
    plan_source: str | None
    exp_id: str | None
    run_dir: str | None
    metrics: dict[str, Any] | None
    exp_worker_s: float | None
    verdict: dict[str, Any] | None
    edit: dict[str, Any] | None
    history: list[dict[str, Any]]
    incumbent: dict[str, Any] | None
    noise: float | None
    elapsed_s: float
    worker_s: float
    agent_s: float
    done: bool
    stop_reason: str


class ResearchAgent:
    """Holds what nodes need but a checkpoint must not: the workspace, the planner, the settings, the LLM
    clients and their cost ledger (a file, so the spend survives kills)."""

    def __init__(self, settings: RunSettings, env: dict[str, str] | None = None):
        self.s = settings
        self.goal: Goal = parse_goal(settings.goal)
        from harness.tokenizer import parse_tokenizer_spec

        _, self.vocab = parse_tokenizer_spec(settings.tokenizer)
        self.run_dir = settings.run_dir
        self.prompts = Prompts(Path(settings.prompts_dir) if settings.prompts_dir else None)
        self.ledger = CostLedger(self.run_dir / "llm_calls.jsonl")
        planner_client = make_client(settings.planner, "planner", env)
        judge_client = make_client(judge_spec(settings.planner, settings.judge, env), "judge", env)
        if settings.max_cost_usd is not None:
            for client in (planner_client, judge_client):
                if client and client.spec.price(client.model) is None:
                    raise UserError(f"no price known for model {client.model!r}, so --max-cost cannot be enforced: "
                                    "give --price-in and --price-out (USD per million tokens)")
        offline = OfflinePlanner(self.goal, self.vocab, settings.experiment_budget, settings.search_trials, settings.seed)
        self.planner = Planner(self.goal, offline, settings.tokenizer, settings.experiment_budget, self.prompts, planner_client,
                               self.ledger, settings.max_plan_attempts, settings.max_cost_usd)
        self.llm_judge = (LLMJudge(self.goal, judge_client, self.ledger, self.prompts, max_cost_usd=settings.max_cost_usd)
                          if judge_client else None)

    def describe_llms(self) -> str:
        judge = self.llm_judge.describe() if self.llm_judge else "metric rule with measured noise"
        return f"planner: {self.planner.describe()}; judge: {judge}"

    # -------------------------------------------------------------------------------------- nodes

    def _timed(self, state: AgentState, started: float, worker_s: float = 0.0) -> dict[str, float]:
        dt = time.monotonic() - started
        return {"elapsed_s": state.get("elapsed_s", 0.0) + dt, "agent_s": state.get("agent_s", 0.0) + dt - worker_s,
                "worker_s": state.get("worker_s", 0.0) + worker_s}

    def _stop_reason(self, state: AgentState) -> str | None:
        s = self.s
        if (self.run_dir / "STOP").exists():
            return "stop file"
        if state.get("elapsed_s", 0.0) >= s.budget_s:
            return f"time budget of {s.budget_s:g}s spent"
        if s.max_experiments is not None and len(state.get("history", [])) >= s.max_experiments:
            return f"{s.max_experiments} experiments done"
        if s.max_cost_usd is not None and self.ledger.total_usd >= s.max_cost_usd:
            return f"LLM spend cap of ${s.max_cost_usd:g} reached (${self.ledger.total_usd:.4f} spent)"
        if s.max_gpu_hours is not None and self._gpus() and state.get("worker_s", 0.0) * self._gpus() / 3600 >= s.max_gpu_hours:
            return f"{s.max_gpu_hours:g} GPU-hours spent"
        remaining = s.budget_s - state.get("elapsed_s", 0.0)
        if remaining < 0.5 * self._expected_experiment_s(state):
            return "too little time left for another experiment"
        return None

    def _expected_experiment_s(self, state: AgentState) -> float:
        """Wall clock of a training experiment as measured so far (start-up and evaluation included), else
        its nominal budget: the run does not start an experiment it would overrun by more than half."""
        walls = [h["worker_s"] for h in state.get("history", []) if h["plan"]["kind"] in MODEL_KINDS and h.get("worker_s")]
        if walls:
            return statistics.fmean(walls[-5:])
        return parse_budget(self.s.experiment_budget).seconds or 0.0

    @staticmethod
    def _gpus() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def plan(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        reason = self._stop_reason(state)
        if reason:
            return {"done": True, "stop_reason": reason, **self._timed(state, t0)}
        repeat = scheduled_repeat(state.get("history", []))  # the loop's own repeats come before any planner's idea
        outcome = (PlanOutcome(repeat, "rule", ["the loop re-runs a close call / measures noise with another seed before anything else"])
                   if repeat is not None else
                   self.planner.propose(state.get("history", []), state.get("incumbent"), state.get("noise"), self._plan_context(state)))
        plan = outcome.plan
        exp_id = f"e{state.get('step', 0) + 1:03d}"
        notes = "".join(f"- {n}\n" for n in outcome.notes)
        self._journal(f"## {exp_id}: {plan.kind} (planned by {outcome.source})\n\n{notes}{plan.rationale}\n")
        PROGRESS.print(f"[bold]{exp_id}[/] {escape(self._title(plan.model_dump()))} [dim](planner: {outcome.source}, "
                       f"{state.get('elapsed_s', 0.0):.0f}s of {self.s.budget_s:.0f}s used)[/]")
        return {"plan": plan.model_dump(), "plan_source": outcome.source, "exp_id": exp_id, "metrics": None, "verdict": None, "edit": None,
                **self._timed(state, t0)}

    def _plan_context(self, state: AgentState) -> PlanContext:
        g = self.goal
        return PlanContext(vocab_size=self.vocab, max_mb=g.max_mb, max_params=g.max_params, max_latency_ms=g.max_latency_ms,
                           time_left_s=self.s.budget_s - state.get("elapsed_s", 0.0), experiment_budget=self.s.experiment_budget,
                           models=tuple(model_runs(state.get("history", []))), has_incumbent=state.get("incumbent") is not None,
                           code_editing=self.s.code_editing)

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
        configs = BuiltinEditor(watch=()).edit(ws.root, EditInstruction(files=config_files(plan, exp_id)))
        if not configs.ok:
            return {"edit": {"ok": False, "editor": "builtin", "error": f"builtin: {configs.error}", "cost_usd": 0.0}, **self._timed(state, t0)}
        if not plan.get("code_change"):
            return {"edit": None, **self._timed(state, t0)}
        log_dir = ws.root / "runs" / exp_id / "edit"
        results = apply_code_change(self.s, self.prompts, plan, exp_id, self._title(plan), ws.root, log_dir, state.get("history", []))
        summary = edit_summary(results, log_dir)
        for r in results:
            PROGRESS.print(f"     [dim]edit:[/] {escape(r.summary())}")
            if r.editor in ("claude-code", "gui"):  # LLM editors; the built-in one and patch replays cost nothing
                self.ledger.add(CallRecord(role="editor", provider=r.editor, model=self.s.claude_model or r.editor, input_tokens=0,
                                           output_tokens=0, cost_usd=r.cost_usd if r.editor == "claude-code" else None,
                                           seconds=r.wall_s, ok=r.ok, note=(r.error or f"{len(r.files_changed)} file(s)")[:200]))
        self._journal("Code change: " + plan["code_change"] + "\n\n" + "".join(
            f"- {r.summary()}" + (f" (transcript {r.transcript})" if r.transcript else "") + "\n" for r in results))
        return {"edit": summary, **self._timed(state, t0)}

    def _limits(self, own_s: float, state: AgentState, scored: bool = False) -> tuple[float, float]:
        """(timeout, worker cap) of the next experiment. Budgets hold: the timeout is the experiment's own limit or, if
        less, the time left in the run plus one grace period; the worker's own wall cap is the time left (and leaves a
        reserve before the timeout), so a worker that would overrun stops at the run's budget and writes its metrics
        (a partial result: a crash) before anything is killed. A model the harness scores afterwards (``scored``)
        leaves that scoring its measured time out of the cap."""
        left = max(self.s.budget_s - state.get("elapsed_s", 0.0), 0.0)
        timeout = min(own_s, left + self.s.grace_s)
        reserve = self._scoring_reserve_s() if scored else 0.0
        return timeout, max(1.0, min(left - reserve, timeout - reserve - min(self.s.grace_s, 0.25 * timeout)))

    def _scoring_reserve_s(self) -> float:
        """Time kept for the harness's scoring of a model: 1.5 x the slowest scoring so far (60 s before the first)."""
        return 1.5 * getattr(self, "_scoring_s", 40.0)

    def _command(self, plan: dict[str, Any], out: Path, state: AgentState) -> tuple[list[str], float]:
        cmd, own_s = self._own_command(plan, out, state)
        timeout, cap = self._limits(own_s, state, scored=plan["kind"] in MODEL_KINDS)
        if plan["kind"] in ("train", "distill"):
            cmd += ["--max-seconds", f"{cap:.1f}"]
        elif plan["kind"] == "nas_search":  # the search stops sampling at its budget and caps its trials at what is left
            cmd += ["--budget", f"{cap:.1f}s", "--cap-trials"]
        return cmd, timeout

    def _own_command(self, plan: dict[str, Any], out: Path, state: AgentState) -> tuple[list[str], float]:
        """The worker's command line and its own time limit (a token budget's limit is generous: the run's time left
        and the worker's wall cap are what bound it)."""
        s, cfg = self.s, plan["config"]
        py = [sys.executable, "-m", "nas"]
        if plan["kind"] == "distill":
            teacher = resolve_model_ref(cfg["teacher"], state)
            cmd = [sys.executable, "-m", "distill", "distill", "--teacher", teacher, "--student", "configs/arch.json",
                   "--loss", cfg["loss"], "--temperature", str(cfg["temperature"]), "--ce-weight", str(cfg["ce_weight"]),
                   "--budget", cfg["budget"], "--out", str(out), "--seed", str(cfg["seed"]), "--lr", str(cfg["lr"]),
                   "--batch-size", str(cfg["batch_size"]), "--corpus", s.corpus, "--eval-bytes", str(s.eval_bytes), "--quiet"]
            b = parse_budget(cfg["budget"])
            return cmd, (b.seconds * 4 + 180) if b.seconds else 3600.0
        if plan["kind"] == "compress":
            cmd = [sys.executable, "-m", "kernels", "compress", "--model", resolve_model_ref(cfg["target"], state), "--out", str(out),
                   "--eval-bytes", str(s.eval_bytes), "--quiet", "--int8" if cfg["int8"] else "--no-int8"]
            if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
                cmd.append("--onnx")  # so the deployment runtime is chosen among PyTorch and ONNX Runtime by measurement
            if cfg.get("prune"):
                cmd += ["--prune", cfg["prune"]]
            if cfg.get("recover"):
                cmd += ["--recover", cfg["recover"]]
            b = parse_budget(cfg["recover"]) if cfg.get("recover") else None
            return cmd, ((b.seconds or 0) * 3 if b else 0) + 600.0
        if plan["kind"] == "eval":
            target = resolve_model_ref(cfg["target"], state)
            cmd = [sys.executable, "-m", "distill", "eval", "humaneval", "--model", target, "--out", str(out), "--generate-only",
                   "-n", str(cfg["n"]), "-k", "1", "--max-new-tokens", str(cfg["max_new_tokens"]), "--seed", str(cfg["seed"])]
            if cfg.get("limit"):
                cmd += ["--limit", str(cfg["limit"])]
            return cmd, 1800.0
        if plan["kind"] == "train":
            cmd = py + ["train", "--arch", "configs/arch.json", "--budget", cfg["budget"], "--out", str(out), "--seed", str(cfg["seed"]),
                        "--lr", str(cfg["lr"]), "--batch-size", str(cfg["batch_size"]), "--tokenizer", s.tokenizer,
                        "--corpus", s.corpus, "--eval-bytes", str(s.eval_bytes), "--quiet"]
            b = parse_budget(cfg["budget"])
            return cmd, (b.seconds * 3 + 180) if b.seconds else 3600.0
        cmd = py + ["nas", "search", "--out", str(out), "--space", cfg["space"], "--objectives", cfg["objectives"],
                    "--strategy", cfg["strategy"], "--trials", str(cfg["trials"]), "--stage1", cfg["stage1_budget"], "--stage2", "none",
                    "--seed", str(cfg["seed"]), "--tokenizer", s.tokenizer, "--corpus", s.corpus, "--eval-bytes", str(s.eval_bytes), "--quiet"]
        if cfg.get("max_mb"):
            cmd += ["--max-mb", str(cfg["max_mb"])]
        if cfg.get("max_latency_ms"):
            cmd += ["--max-latency-ms", str(cfg["max_latency_ms"])]
        b = parse_budget(cfg["stage1_budget"])
        per = (b.seconds * 3 + 120) if b.seconds else 600.0
        return cmd, per * cfg["trials"] + 300

    def run(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        ws = self.workspace()
        plan, exp_id = state["plan"], state["exp_id"]
        assert plan is not None and exp_id is not None
        out = Path("runs") / exp_id  # relative to the workspace, ignored by git
        (ws.root / out).mkdir(parents=True, exist_ok=True)
        edit = state.get("edit")
        if edit and not edit["ok"]:
            metrics = RunMetrics.failure("crashed", f"edit failed: {edit['error']}").flat()
            return {"metrics": metrics, "run_dir": str(ws.root / out), "exp_worker_s": 0.0, **self._timed(state, t0)}
        try:
            cmd, timeout = self._command(plan, out, state)
        except UserError as err:  # e.g. the teacher's run folder is gone: the experiment fails, the run goes on
            metrics = RunMetrics.failure("crashed", str(err)).flat()
            return {"metrics": metrics, "run_dir": str(ws.root / out), "exp_worker_s": 0.0, **self._timed(state, t0)}
        if plan["kind"] == "nas_search":
            cmd += search_continuation(ws.root / out, plan)
        log = ws.root / out / "worker.log"
        try:
            if ws.has_code():
                code_files(ws.root)  # a workspace whose nas/ would replace fixed code is refused before anything runs
            confinement = experiment_confinement(ws, self.s, out)
            if confinement is not None:
                prepare_shared_cache(self.s)
            outcome = run_limited(cmd, ws.root, log, timeout_s=timeout, memory_mb=self.s.memory_mb, env=experiment_env(ws),
                                  confinement=confinement)
        except (ConfinementUnavailable, UserError) as err:  # the experiment fails with the reason, the run goes on
            metrics = RunMetrics.failure("crashed", str(err)).flat()
            return {"metrics": metrics, "run_dir": str(ws.root / out), "exp_worker_s": 0.0, **self._timed(state, t0)}
        # what re-makes this result, written by us after the worker is gone (its own copies are not trusted)
        stored_command(cmd, out, timeout, ws.has_code()).save(ws.root / out)
        if plan["kind"] in MODEL_KINDS and (ws.root / out / "model.safetensors").is_file():
            write_code_record(ws.root / out, ws.root if ws.has_code() else None, commit=ws.repo.head.commit.hexsha)
        metrics_path = ws.root / out / METRICS_FILE
        try:
            if plan["kind"] == "eval":  # only numbers the installed harness wrote, outside the workspace, count
                scoring = (self.run_dir / "scoring" / exp_id).absolute()  # the scorer's working folder is the workspace
                metrics_path = scoring / METRICS_FILE
                if outcome.ok:
                    score_cmd, score_env = trusted_scoring(plan, ws.root / out, scoring)
                    scored = run_limited(score_cmd, ws.root, scoring / "score.log", timeout_s=max(1.0, timeout - outcome.wall_s),
                                         memory_mb=self.s.memory_mb, env=score_env)
                    outcome = replace(scored, wall_s=outcome.wall_s + scored.wall_s)
                    for name in ("metrics.json", "samples.jsonl_results.jsonl"):  # the numbers beside the samples
                        copy_regular(scoring / name, ws.root / out / name, 256 * 2**20)  # replaces whatever stood there
            # parsed and checked once, here; the judge, the record and the report see its flat dict
            metrics = read_metrics(metrics_path).flat() if outcome.ok or plan["kind"] != "eval" else None
        except MissingRunFile:
            metrics = None
        except (UnsafeFile, RunFileError) as err:  # a link, a FIFO, a huge, malformed or nested file: its experiment fails
            metrics = RunMetrics.failure("crashed", str(err)).flat()
        if metrics is None:
            metrics = RunMetrics.failure("crashed", ("timed out" if outcome.timed_out else f"exit code {outcome.returncode}")
                                         + f"; see {out / 'worker.log'}").flat()
        if plan["kind"] in MODEL_KINDS and metrics.get("status") == "ok" and isinstance(metrics.get("val_bpb"), float):
            left = timeout - (time.monotonic() - t0)  # scoring is part of the experiment: the worker's cap left it time
            metrics = self._harness_score(metrics, ws.root / out, exp_id, max(left, self._scoring_reserve_s()))
        return {"metrics": metrics, "run_dir": str(ws.root / out), "exp_worker_s": outcome.wall_s,
                **self._timed(state, t0, worker_s=outcome.wall_s)}

    def judge(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        plan, metrics = state["plan"], state.get("metrics")
        assert plan is not None
        history = state.get("history", [])
        if plan["kind"] == "eval":
            ok = bool(metrics) and "humaneval_pass_at_1" in metrics
            verdict = {"decision": "keep" if ok else "crash", "metric": None,
                       "reason": (f"HumanEval pass@1 {metrics['humaneval_pass_at_1']:.4f} on {metrics['humaneval_problems']} problems"
                                  if ok else str((metrics or {}).get("fail_reason", "evaluation failed")))}
            return {"verdict": verdict, **self._timed(state, t0)}
        if plan["kind"] == "compress":
            ok = bool(metrics) and metrics.get("status") == "ok" and isinstance(metrics.get("val_bpb"), float)
            reason = str((metrics or {}).get("fail_reason", "compression failed"))
            if ok:
                size = metrics.get("size_bytes_on_disk_int8") or metrics.get("size_bytes_on_disk_fp32")
                reason = (f"compressed {plan['config']['target']}: val bpb {metrics['val_bpb_before']:.4f} -> {metrics['val_bpb']:.4f} "
                          f"({metrics['val_bpb_change_pct']:+.2f}%), {size / 1e6:.3f} MB on disk"
                          + (f", {metrics['latency_ms_p50_deploy_cpu']:.2f} ms/token on CPU with {metrics['deploy_cpu_runtime']}"
                             if "latency_ms_p50_deploy_cpu" in metrics else
                             f", {metrics['latency_ms_p50']:.2f} ms/token" if "latency_ms_p50" in metrics else ""))
            return {"verdict": {"decision": "keep" if ok else "crash", "metric": None, "reason": reason}, **self._timed(state, t0)}
        if plan["kind"] == "nas_search":
            ok = bool(metrics) and metrics.get("status") == "ok"
            verdict = {"decision": "keep" if ok else "crash", "metric": (metrics or {}).get("val_bpb"),
                       "reason": (f"search found a front of {metrics.get('front_size')}; its members are trained next" if ok
                                  else str((metrics or {}).get("fail_reason", "search failed")))}
            return {"verdict": verdict, **self._timed(state, t0)}
        if plan["kind"] in MODEL_KINDS and metrics and metrics.get("status") == "ok":
            metrics = settle_latency(self.goal.max_latency_ms, metrics, lambda i: self._remeasure_latency(state, i))
        key = group_key(plan)
        groups: dict[str, list[float]] = {}
        for h in history:
            if h["plan"]["kind"] in MODEL_KINDS and isinstance(h.get("val_bpb"), float):
                groups.setdefault(group_key(h["plan"]), []).append(h["val_bpb"])
        bpb = (metrics or {}).get("val_bpb")
        same = list(groups.get(key, []))  # the earlier runs of this config (a copy: the current one is appended below)
        if isinstance(bpb, float):
            groups.setdefault(key, []).append(bpb)
        noise = noise_estimate(list(groups.values()))
        incumbent = state.get("incumbent")
        inc_key = group_key(incumbent["plan"]) if incumbent else None
        if incumbent and key == inc_key and isinstance(bpb, float):  # a repeat of the incumbent only measures noise (a crash is a crash)
            verdict = {"decision": "repeat", "reason": "repeat of the incumbent with another seed (noise measurement)",
                       "metric": bpb, "noise": noise}
            return {"verdict": verdict, "noise": noise, "metrics": metrics, **self._timed(state, t0)}
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
        return {"verdict": v.model_dump(), "noise": noise, "metrics": metrics, **self._timed(state, t0)}

    def _remeasure_latency(self, state: AgentState, attempt: int) -> dict[str, Any] | None:
        """A fresh latency measurement of this experiment's saved model (None when it fails: the judge goes on
        with the sessions it has)."""
        ws, exp_id, metrics = self.workspace(), state["exp_id"], state.get("metrics") or {}
        assert exp_id is not None
        out = Path("runs") / exp_id  # relative to the workspace, as for the worker
        result = out / f"latency_remeasure_{attempt}.json"
        cmd = remeasure_command(out, result, str(metrics.get("latency_device", "cpu")))
        try:
            outcome = run_limited(cmd, ws.root, ws.root / out / "latency_remeasure.log", timeout_s=REMEASURE_TIMEOUT_S,
                                  memory_mb=self.s.memory_mb, env=experiment_env(ws), confinement=experiment_confinement(ws, self.s, out))
            fresh = read_json_object(ws.root / result) if outcome.ok else None
        except (ConfinementUnavailable, UserError, UnsafeFile):
            return None
        PROGRESS.print(f"     [dim]latency re-measured ({attempt}): "
                       f"{(fresh or {}).get('latency_ms_p50', float('nan')):.3f} ms/token p50[/]")
        return fresh

    def record(self, state: AgentState) -> dict[str, Any]:
        t0 = time.monotonic()
        ws = self.workspace()
        plan, exp_id, verdict, metrics = state["plan"], state["exp_id"], state["verdict"], state.get("metrics") or {}
        assert plan is not None and exp_id is not None and verdict is not None
        decision = verdict["decision"]
        done_ids = {e.trailers.get("experiment") for e in ws.experiments()}
        commit = ""
        title = self._title(plan)
        if decision == "keep":
            if exp_id not in done_ids:  # idempotent: a re-run of this node after a kill does not commit again
                trailers = {"experiment": exp_id, "kind": plan["kind"]}
                for key, name in (("val_bpb", "val-bpb"), ("size_bytes_int8", "size-int8-bytes"), ("latency_ms_p50", "latency-ms-p50"),
                                  ("latency_ms_spread", "latency-ms-spread"), ("params", "params"), ("humaneval_pass_at_1", "humaneval-pass-at-1"),
                                  ("size_bytes_on_disk_int8", "size-on-disk-int8-bytes"), ("val_bpb_change_pct", "bpb-change-pct")):
                    if key in metrics:
                        trailers[name] = metrics[key]
                trailers.update(self._provenance(plan, state.get("run_dir"), metrics))
                if verdict.get("delta") is not None:
                    trailers["delta-bpb"] = verdict["delta"]
                noise, source = noise_margin(verdict, state)
                trailers["noise-bpb"], trailers["noise-source"] = noise, source
                body = f"{plan['rationale']}\n\nJudge: {verdict['reason']}"
                if state.get("run_dir") and (Path(state["run_dir"]) / COMMAND_FILE).is_file():
                    body += f"\n\nCommand: {WorkerCommand.load(Path(state['run_dir'])).display()}"
                edit = state.get("edit")
                if edit and edit.get("ok"):
                    body += f"\n\nCode change ({edit['editor']}): {plan['code_change']}\nFiles: {', '.join(edit['files'])}"
                    trailers["editor"] = edit["editor"]
                    if edit.get("cost_usd"):
                        trailers["edit-cost-usd"] = edit["cost_usd"]
                commit = ws.commit_experiment(title, body, trailers)
                if state.get("run_dir") and plan["kind"] in MODEL_KINDS:
                    stamp_commit(Path(state["run_dir"]), commit)
            else:
                commit = next(e.sha for e in ws.experiments() if e.trailers.get("experiment") == exp_id)
        else:
            ws.discard(exp_id, title)
        entry = {"id": exp_id, "plan": plan, "planner": state.get("plan_source") or "offline", "decision": decision, "reason": verdict["reason"], "commit": commit,
                 "edit": state.get("edit"),
                 "run_dir": state.get("run_dir"), "worker_s": state.get("exp_worker_s"), "val_bpb": metrics.get("val_bpb") if isinstance(metrics.get("val_bpb"), float) else None,
                 "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        entry["noise_bpb"], entry["noise_source"] = noise_margin(verdict, state)
        self._append_result(entry, verdict)
        self._journal(f"**{decision}**: {verdict['reason']}" + (f" (commit {commit[:10]})" if commit else "") + "\n")
        bpb = entry["val_bpb"]
        PROGRESS.print(f"     {decision}" + (f", val bpb {bpb:.4f}" if bpb is not None else "") + f": {escape(verdict['reason'])}"
                       + (f" [green](commit {commit[:10]})[/]" if commit else ""))
        history = list(state.get("history", [])) + [entry]
        update: dict[str, Any] = {"history": history, "step": state.get("step", 0) + 1}
        if decision == "keep" and plan["kind"] in MODEL_KINDS:
            update["incumbent"] = entry
        return {**update, **self._timed(state, t0)}

    def report(self, state: AgentState) -> dict[str, Any]:
        from agent.report import write_report

        t0 = time.monotonic()
        write_report(self, state)
        return {"done": True, **self._timed(state, t0)}

    # -------------------------------------------------------------------------------------- helpers

    def _harness_score(self, metrics: dict[str, Any], run_dir: Path, exp_id: str, timeout_s: float) -> dict[str, Any]:
        """The recorded val bpb is the harness's own score of the saved model (its code running apart, confined when
        edited); the worker's figure is kept beside it, and a worker whose figure is off is a failed experiment."""
        started = time.monotonic()
        try:
            scored = score_model(self.s, run_dir, "val", (self.run_dir / "scoring" / exp_id).absolute(), timeout_s)
            self._scoring_s = max(getattr(self, "_scoring_s", 0.0), time.monotonic() - started)
        except (ScoringRefused, ConfinementUnavailable, UserError) as err:
            return RunMetrics.failure("crashed", f"the harness could not score the model: {err}").flat()
        reported = metrics["val_bpb"]
        if abs(reported - scored.bpb) > max(0.01, 0.01 * scored.bpb):
            return RunMetrics.failure("crashed", f"the worker reported val bpb {reported:.4f}; the harness scores its model "
                                                 f"{scored.bpb:.4f}").flat()
        return {**metrics, "val_bpb": scored.bpb, "val_bpb_worker": reported, "val_bytes": scored.bytes,
                "val_causality_probes": scored.probes}

    def _provenance(self, plan: dict[str, Any], run_dir: str | None, metrics: dict[str, Any]) -> dict[str, Any]:
        """The trailers that let ``autonas reproduce`` re-make a kept model: seed, tokens trained, code hash, corpus."""
        if plan["kind"] not in MODEL_KINDS:
            return {}
        out: dict[str, Any] = {"seed": plan["config"]["seed"]}
        if isinstance(metrics.get("tokens_trained"), int):
            out["tokens"] = metrics["tokens_trained"]
        record = read_code_record(Path(run_dir)) if run_dir else None
        if record is not None:
            out["code-hash"] = record.hash
        if not hasattr(self, "_corpus_fingerprint"):
            from harness.data import CorpusSpec, prepare_corpus

            self._corpus_fingerprint = prepare_corpus(CorpusSpec(source=self.s.corpus), self.s.tokenizer).corpus_fingerprint
        out["corpus"] = self._corpus_fingerprint
        return out


    def workspace(self) -> Workspace:
        if not hasattr(self, "_ws"):
            self._ws = Workspace.open(self.s.workspace, self.s.run_id)
            if self._ws.carries_whole_package():
                raise UserError(f"workspace {self._ws.root} was made by an older version (it carries the whole nas package, "
                                "its measurement included): start a new run")
            # a kill during an edit leaves the editor's change in the tree: it is the agent's, and the edit node redoes it
            self._ws.ensure_clean_except_agent(("configs/", "nas/") if self._ws.has_code() else ("configs/",))
        return self._ws

    @classmethod
    def _title(cls, plan: dict[str, Any]) -> str:
        title = cls._config_title(plan)
        return f"{title} + code change" if plan.get("code_change") else title

    @staticmethod
    def _config_title(plan: dict[str, Any]) -> str:
        if plan["kind"] == "train":
            from nas.space import ArchConfig

            arch = ArchConfig(**plan["config"]["arch"])
            return f"train {arch.describe()} for {plan['config']['budget']} (seed {plan['config']['seed']})"
        if plan["kind"] == "distill":
            from nas.space import ArchConfig

            c = plan["config"]
            return (f"distill {c['teacher']} into {ArchConfig(**c['arch']).describe()} ({c['loss']}, T={c['temperature']:g}) "
                    f"for {c['budget']} (seed {c['seed']})")
        if plan["kind"] == "compress":
            c = plan["config"]
            return f"compress {c['target']}: " + " + ".join(x for x in (c.get("prune"), c.get("recover") and f"recover {c['recover']}",
                                                                       "int8" if c["int8"] else None) if x)
        if plan["kind"] == "eval":
            c = plan["config"]
            return f"HumanEval of {c['target']} ({c['limit'] or 164} problems, n={c['n']})"
        return f"architecture search: {plan['config']['trials']} trials, {plan['config']['objectives']}"

    def _journal(self, text: str) -> None:
        with open(self.s.workspace / "journal.md", "a") as fh:
            fh.write(text + "\n")

    def _append_result(self, entry: dict[str, Any], verdict: dict[str, Any]) -> None:
        path = self.s.workspace / "results.tsv"
        if path.exists():
            with open(path) as fh:
                if any(row.get("experiment") == entry["id"] for row in csv.DictReader(fh, delimiter="\t")):
                    return
        m = entry["metrics"]
        arch = entry["plan"]["config"].get("arch")
        row = {"experiment": entry["id"], "commit": entry["commit"][:10], "kind": entry["plan"]["kind"], "decision": entry["decision"],
               "val_bpb": m.get("val_bpb", ""), "size_bytes_int8": m.get("size_bytes_int8", ""), "latency_ms_p50": m.get("latency_ms_p50", ""),
               "params": m.get("params", ""), "delta_bpb": verdict.get("delta", ""), "noise_bpb": entry["noise_bpb"],
               "noise_source": entry["noise_source"],
               "seed": entry["plan"]["config"].get("seed", ""), "rationale": entry["plan"]["rationale"], "reason": entry["reason"],
               "arch": _describe(arch) if arch else "", "planner": entry.get("planner", "")}
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, delimiter="\t")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def noise_margin(verdict: dict[str, Any], state: AgentState) -> tuple[float, str]:
    """The run-to-run noise (bpb) a result was judged against: measured from repeats, or the judge's floor
    (said so) while no repeat has finished."""
    measured = verdict.get("noise") if verdict.get("noise") is not None else state.get("noise")
    return (float(measured), "measured") if measured is not None else (MIN_NOISE, "floor")


def experiment_env(ws: Workspace) -> dict[str, str]:
    """A worker's whole environment: the allow-listed worker settings of this process (no keys: no worker the
    agent starts talks to an LLM), unbuffered output, and the workspace's code first on the import path."""
    return worker_env(ws.has_code(), ws.root, child_env(WORKER, {"PYTHONUNBUFFERED": "1"}))


PLAN_STAMP = "agent_plan.json"


def search_continuation(out: Path, plan: dict[str, Any]) -> list[str]:
    """``["--resume"]`` when a nas_search experiment is re-run (after a kill) in a folder that holds its study: the
    search continues, its finished trials count. The folder carries a stamp of the plan that started the study, so
    a study of another plan is never continued: that folder is moved aside (kept for review) and the search starts
    afresh, as it does when the study is missing or unreadable."""
    from nas.search import SearchConfig
    from nas.storage import open_storage, study_exists

    stamp = {"kind": plan["kind"], "config": plan["config"], "code_change": plan.get("code_change")}
    stamp_path = out / PLAN_STAMP
    if (out / "study.journal").exists():
        try:
            same_plan = json.loads(stamp_path.read_text()) == stamp
        except (OSError, ValueError):
            same_plan = False
        if same_plan:
            try:
                if study_exists(open_storage(None, out), SearchConfig.model_fields["study_name"].default):
                    return ["--resume"]
            except UserError:
                pass
        n = 1
        while out.with_name(f"{out.name}.stale-{n}").exists():
            n += 1
        aside = out.with_name(f"{out.name}.stale-{n}")
        out.rename(aside)
        out.mkdir()
        PROGRESS.print(f"     [dim]{out.name}: the folder held a study this plan cannot continue; moved to {aside.name}[/]")
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    return []


def _describe(arch: dict[str, Any]) -> str:
    from nas.space import ArchConfig

    return ArchConfig(**arch).describe()


def _route_after_plan(state: AgentState) -> str:
    return "report" if state.get("done") else "edit"


def build_graph(agent: ResearchAgent) -> StateGraph:
    g = StateGraph(AgentState)
    for name in ("plan", "edit", "run", "judge", "record", "report"):
        g.add_node(name, getattr(agent, name))
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", _route_after_plan, {"edit": "edit", "report": "report"})
    g.add_edge("edit", "run")
    g.add_edge("run", "judge")
    g.add_edge("judge", "record")
    g.add_edge("record", "plan")
    g.add_edge("report", END)
    return g


def open_checkpointer(run_dir: Path) -> SqliteSaver:
    conn = sqlite3.connect(str(run_dir / "checkpoints.sqlite"), check_same_thread=False)
    return SqliteSaver(conn)


def graph_config(run_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": run_id}, "recursion_limit": RECURSION_LIMIT}


BEST_FILE_MAX_BYTES = 8 * 2**30


def copy_best(agent: ResearchAgent, incumbent: dict[str, Any] | None) -> Path | None:
    """Put the incumbent's model, arch and tokenizer in RUN/best (and an HF folder where exportable)."""
    if not incumbent or not incumbent.get("run_dir"):
        return None
    src = Path(incumbent["run_dir"])
    best = agent.run_dir / "best"
    best.mkdir(exist_ok=True)
    names = ["model.safetensors", "arch.json", "tokenizer.json", "metrics.json", CODE_RECORD]
    record = read_code_record(src)
    if record is not None:
        remove(best / CODE_DIR)
        (best / CODE_DIR / "nas").mkdir(parents=True)
        names += [f"{CODE_DIR}/{f}" for f in record.files]
    for name in names:
        try:  # a worker's file: copied only if it is a regular file, never through a link it planted
            copy_regular(src / name, best / name, BEST_FILE_MAX_BYTES)
        except UnsafeFile as err:
            PROGRESS.print(f"[yellow]best/: {escape(str(err))}; not copied[/yellow]")
    return best


def model_runs(history: list[dict[str, Any]]) -> dict[str, str]:
    """Experiment id -> run folder of every finished model (train / distill with a val bpb)."""
    return {h["id"]: h["run_dir"] for h in history
            if h["plan"]["kind"] in MODEL_KINDS and h.get("val_bpb") is not None and h.get("run_dir")}


def resolve_model_ref(ref: str, state: AgentState) -> str:
    """'incumbent' or an experiment id -> that model's run folder (absolute)."""
    if ref == "incumbent":
        inc = state.get("incumbent")
        if not inc or not inc.get("run_dir"):
            raise UserError("no incumbent model yet")
        path = inc["run_dir"]
    else:
        runs = model_runs(state.get("history", []))
        if ref not in runs:
            raise UserError(f"experiment {ref} has no finished model")
        path = runs[ref]
    if not (Path(path) / "model.safetensors").is_file():
        raise UserError(f"the model of {ref} is missing ({path})")
    return str(Path(path).resolve())
