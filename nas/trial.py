"""One search trial: train an architecture at one fidelity and report its metrics.

``run_trial`` is what every executor runs, in a worker process of its own (local) or a Ray worker, so a
trial's outcome does not depend on where it ran. A trial folder whose ``metrics.json`` already exists is
read back instead of retrained (so a resumed search repeats no finished work), and one with a checkpoint
continues from it.

A trial with ``init_from`` (a parent trial's folder) starts from that parent's trained weights: grown by
:func:`nas.morphism.grow` when the change keeps the parent's function (the same architecture is a plain copy: a
promotion to the next rung), else from scratch. The child's start is written once, before training, as
``init.safetensors`` with ``init.json`` saying how it started; a child interrupted after its first checkpoint resumes
from the checkpoint and is never grown again. ``metrics.json`` records the start (``init``) and the tokens the start
had already been trained on (``tokens_inherited``); the result adds ``tokens_cumulative``.
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
INIT_WEIGHTS = "init.safetensors"  # a grown or copied child's start, written before its training
INIT_RECORD = "init.json"  # how the child started (InitRecord), read again by a resumed child


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
    init_from: str | None = None  # a parent trial's folder to start from (None: a fresh initialisation)
    replicate: int = Field(0, ge=0, description="0: the trial; 1, 2 ...: the same trial again with another seed")


class InitRecord(BaseModel):
    """How a trial started, as metrics.json and results.tsv show it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    init: str  # "scratch", "continued from s1-00012", "parent s1-00012 (wider FFN)", "scratch: d_model changed"
    init_from: str = ""  # the parent's folder name when the weights came from it
    tokens_inherited: int = 0  # tokens the start had been trained on (0 from scratch)


class TrialResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int
    stage: int
    replicate: int = 0
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


def _tokens_of(folder: Path) -> int:
    """The tokens a finished trial's model has seen, counting what it inherited."""
    try:
        flat = read_metrics(folder / METRICS_FILE).flat()
    except RunFileError:
        return 0
    return int(flat.get("tokens_cumulative", 0) or 0) or int(flat.get("tokens_inherited", 0) or 0) + int(
        flat.get("tokens_trained", 0) or 0
    )


def prepare_start(spec: TrialSpec, out: Path) -> tuple[InitRecord, Path | None]:
    """The trial's start, decided once: ``init.json`` (and ``init.safetensors`` when inherited) written before
    training, read back by a resumed trial. Returns the record and the weights to start from (None: fresh)."""
    record_path = out / INIT_RECORD
    out.mkdir(parents=True, exist_ok=True)
    if record_path.is_file():
        saved = InitRecord.model_validate_json(record_path.read_text())
        grown = out / INIT_WEIGHTS
        return saved, grown if saved.init_from and grown.is_file() else None
    record, weights = (
        (InitRecord(init="scratch"), None) if spec.init_from is None else _grow_from(spec, Path(spec.init_from), out)
    )
    record_path.write_text(record.model_dump_json())
    return record, weights


def _grow_from(spec: TrialSpec, parent_dir: Path, out: Path) -> tuple[InitRecord, Path | None]:
    """The child's start grown from the parent's final model (scratch, with the reason, when it cannot be)."""
    # deliberate: torch only in the worker that trains
    from safetensors.torch import load_model, save_model

    from nas.model import build_model
    from nas.morphism import grow, plan_inheritance
    from nas.space import ArchConfig

    name = parent_dir.name
    weights = parent_dir / "model.safetensors"
    if not (parent_dir / "arch.json").is_file():
        return InitRecord(init=f"scratch: parent {name} has no architecture file"), None
    parent_arch = ArchConfig.load(parent_dir / "arch.json")
    how = plan_inheritance(parent_arch, spec.arch)
    if not how.preserved:
        return InitRecord(init=f"scratch: {how.reason}"), None
    if not weights.is_file():
        return InitRecord(init=f"scratch: parent {name} has no trained model"), None
    parent = build_model(parent_arch, seed=spec.seed)
    load_model(parent, str(weights), device="cpu")
    child, how = grow(parent, spec.arch, seed=spec.seed)
    save_model(child, str(out / INIT_WEIGHTS))
    text = f"continued from {name}" if not how.moves else f"parent {name} ({', '.join(how.moves)})"
    return InitRecord(init=text, init_from=name, tokens_inherited=_tokens_of(parent_dir)), out / INIT_WEIGHTS


def with_cumulative_tokens(metrics: dict[str, Any]) -> dict[str, Any]:
    """``tokens_cumulative``: what the trial's final model has seen, its start's tokens included."""
    if "tokens_trained" in metrics:
        metrics = {
            **metrics,
            "tokens_cumulative": int(metrics.get("tokens_inherited", 0) or 0) + int(metrics["tokens_trained"]),
        }
    return metrics


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
            replicate=spec.replicate,
            status=status,
            fail_reason=fail_reason,
            metrics=with_cumulative_tokens(metrics or {}),
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
        record, weights = prepare_start(spec, out)
        outcome = Trainer(
            spec.arch,
            corpus,
            cfg,
            out,
            spec.corpus,
            spec.tokenizer,
            log_to_console=False,
            extra_record={"init": record.init} if record.init_from else None,  # a resume checks its start
            extra_metrics=lambda: record.model_dump(),
            init_weights=weights,
        ).run()
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
