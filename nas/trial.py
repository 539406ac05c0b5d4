"""One search trial: train an architecture at one fidelity and report its metrics.

``run_trial`` is what every executor runs, in a worker process of its own (local) or a Ray worker, so a
trial's outcome does not depend on where it ran. A trial folder whose ``metrics.json`` already exists is
read back instead of retrained (so a resumed search repeats no finished work), and one with a checkpoint
continues from it.
"""

from __future__ import annotations

import time
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard, get_args

from pydantic import BaseModel, ConfigDict, Field

from harness.data import CorpusSpec, TokenizedCorpus, prepare_corpus
from harness.errors import UserError
from harness.run_files import EVAL_BYTES, METRICS_FILE, RunFileError, Status, outcome_fail_reason, read_metrics
from nas.request import TrainRequest

RESULT_FILES = (METRICS_FILE, "log.txt", "arch.json", "run.json")


def _is_status(text: str) -> TypeGuard[Status]:
    """The trainer reports its status as a plain ``str``; a trial's result accepts only :data:`Status`."""
    return text in get_args(Status)


class TrialSpec(TrainRequest):
    """Everything a worker needs to run a trial: the training request (arch, budget, lr, batch size, seed) and where
    and how it runs (flat JSON, sent across processes/machines)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int
    stage: int = Field(1, ge=1)
    out_dir: str
    corpus: CorpusSpec = CorpusSpec()
    tokenizer: str = "byte"
    device: str = "auto"
    eval_bytes: int = EVAL_BYTES
    time_limit_s: float | None = None
    deadline: float | None = None  # time.time() at which training stops (status capped): the search's budget holds
    measure_latency: bool = True


class TrialResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int
    stage: int
    status: Status  # the words of metrics.json (harness.run_files)
    fail_reason: str = ""
    metrics: dict[str, Any] = {}
    run_s: float = 0.0  # time inside run_trial (training + eval + set-up in the worker)
    files: dict[str, str] = {}  # small result files, for executors whose workers do not share the disk


@lru_cache(maxsize=4)
def _cached_corpus(spec_json: str, tokenizer: str) -> TokenizedCorpus:
    return prepare_corpus(CorpusSpec.model_validate_json(spec_json), tokenizer)


def cached_corpus(spec: CorpusSpec, tokenizer: str) -> TokenizedCorpus:
    """The tokenized corpus, kept per process: a worker runs many trials on it, the search screens with it."""
    return _cached_corpus(spec.model_dump_json(), tokenizer)  # keyed by its JSON: one entry per distinct spec


def _read_files(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in RESULT_FILES if (out / name).is_file()}


def run_trial(spec: TrialSpec, include_files: bool = False) -> TrialResult:
    """Train ``spec.arch`` for ``spec.budget`` into ``spec.out_dir``; never raises for a bad trial."""
    # deliberate: nas.train imports torch; this module's TrialSpec/TrialResult are read by light processes
    from nas.train import Trainer, prepare_run_dir

    t0 = time.perf_counter()
    out = Path(spec.out_dir)

    def result(status: Status, fail_reason: str = "", metrics: dict[str, Any] | None = None) -> TrialResult:
        return TrialResult(
            number=spec.number,
            stage=spec.stage,
            status=status,
            fail_reason=fail_reason,
            metrics=metrics or {},
            run_s=time.perf_counter() - t0,
            files=_read_files(out) if include_files else {},
        )

    # finished before a crash of the search: reuse
    if (out / METRICS_FILE).exists() or (out / METRICS_FILE).is_symlink():
        try:
            saved = read_metrics(out / METRICS_FILE)
        except RunFileError as err:  # not what the trainer writes: the trial crashed, it is not retrained over
            return result("crashed", str(err))
        return result(saved.status, saved.fail_reason, saved.flat())
    try:
        corpus = cached_corpus(spec.corpus, spec.tokenizer)
        cfg = spec.train_config(
            device=spec.device,
            eval_bytes=spec.eval_bytes,
            measure_latency=spec.measure_latency,
            checkpoint_every_s=30.0,
            max_seconds=max(spec.deadline - time.time(), 1e-3) if spec.deadline is not None else None,
        )
        prepare_run_dir(out)
        outcome = Trainer(spec.arch, corpus, cfg, out, spec.corpus, spec.tokenizer, log_to_console=False).run()
    except UserError as err:
        return result("crashed", str(err))
    except (RuntimeError, MemoryError) as err:  # CUDA / CPU out of memory, shape errors of exotic configs
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        kind = "out of memory" if "out of memory" in text.lower() or isinstance(err, MemoryError) else "runtime error"
        (out / "error.txt").write_text(traceback.format_exc()) if out.is_dir() else None
        return result("crashed", f"{kind}: {text[:300]}")
    if not _is_status(outcome.status):
        raise ValueError(f"the trainer ended with an unknown status {outcome.status!r}")
    return result(outcome.status, outcome_fail_reason(outcome), outcome.metrics)
