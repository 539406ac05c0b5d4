"""Which experiments run confined, with what, and the trusted half of an evaluation.

Once a run's workspace carries code (a code editor is configured), every worker imports that code, which an
LLM may have written: such workers run under :mod:`sandbox.confine`. They may write only their own run
folder; they read the workspace (their code, configs and the other experiments' models), the corpus, the
token cache and the Hugging Face hub cache (models only: not ``$HF_HOME/token``). The token cache is filled here,
by the installed code, before a confined worker starts, so the worker never needs to write it (and cannot poison it
for later experiments).

An evaluation is split the same way: the confined worker only generates completions with the model's own
code (``--generate-only``); scoring them, which executes generated programs and writes the numbers, runs
the installed harness with ``python -I`` (no workspace on its import path, not even the working folder) in
a fresh folder outside the workspace, on a copy of the samples: nothing the worker left there (a link, a
FIFO, a metrics.json of its own) is followed, read or trusted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.settings import RunSettings
from distill.humaneval_cli import GENERATION_FILE
from harness.data import CorpusSpec, cache_root, prepare_corpus
from harness.errors import UserError
from harness.model_code import MODEL_CODE_ENV, read_code_record, stock_code_hash
from harness.run_files import RunMetrics
from harness.scoring import ScoredBpb, ScoringRefused, score_run
from sandbox.confine import Confinement, ConfinementUnavailable, run_confined
from sandbox.environment import WORKER, child_env
from sandbox.safe_files import UnsafeFile, copy_regular, remove
from sandbox.workspace import Workspace


def hf_cache() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def experiment_confinement(ws: Workspace, settings: RunSettings, out: Path) -> Confinement | None:
    """None when the workspace carries no code (the installed code runs, as written by us)."""
    if not ws.has_code():
        return None
    # not resolved: confine refuses a run folder that is, or passes through, a link planted in the workspace
    return model_confinement(settings, writable=ws.root.absolute() / out, readable=(ws.root.absolute(),))


def model_confinement(settings: RunSettings, writable: Path, readable: tuple[Path, ...]) -> Confinement:
    """Confinement for a process that runs a model's edited code: it writes ``writable`` only and reads ``readable``,
    the corpus, the token cache and the Hugging Face hub cache (models only: not ``$HF_HOME/token``)."""
    paths = [*readable, cache_root(), hf_cache() / "hub"]
    corpus = Path(settings.corpus).expanduser()
    if corpus.exists():
        paths.append(corpus.resolve())
    memory = settings.memory_mb * 2**20 if settings.memory_mb else None
    return Confinement(writable=(writable,), readable=tuple(p for p in paths if p.exists()), memory_bytes=memory)


def prepare_shared_cache(settings: RunSettings) -> None:
    """Tokenize the run's corpus into the shared cache with the installed code (a no-op once it is there)."""
    prepare_corpus(CorpusSpec(source=settings.corpus), settings.tokenizer)


SAMPLES_MAX_BYTES = 256 * 2**20


def trusted_scoring(limit: int | None, worker_out: Path, scoring_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Copy the worker's samples (a regular file, no link followed) into ``scoring_dir``, a fresh folder the worker
    cannot reach, and return the command and environment that score them there with the installed harness.
    Raises :class:`~sandbox.safe_files.UnsafeFile` when the samples are not a plain file."""
    remove(scoring_dir)  # a re-run after a kill is scored again from scratch
    scoring_dir.mkdir(parents=True)
    for name in ("samples.jsonl", GENERATION_FILE):
        copied = copy_regular(worker_out / name, scoring_dir / name, SAMPLES_MAX_BYTES)
        if name == "samples.jsonl" and not copied:
            raise UnsafeFile(f"the worker left no samples.jsonl in {worker_out}")
    cmd = [
        sys.executable,
        "-I",
        "-m",
        "distill",
        "eval",
        "humaneval",
        "--samples",
        str(scoring_dir / "samples.jsonl"),
        "--out",
        str(scoring_dir),
        "-k",
        "1",
    ]
    if limit:  # the eval plan's first N problems
        cmd += ["--limit", str(limit)]
    return cmd, child_env(WORKER)


def score_model(
    settings: RunSettings, run_dir: Path, split: str, scratch: Path, timeout_s: float = 1800.0
) -> ScoredBpb:
    """Bits per byte of the model in ``run_dir`` on ``split``, scored by this process (the installed harness) while the
    model's own code runs in a child that only turns tokens into logits: confined like an experiment when that code
    is not the stock code, its output to ``scratch/logits.log``. Raises ScoringRefused, ConfinementUnavailable or
    UserError with the reason."""
    corpus = prepare_corpus(
        CorpusSpec(source=settings.corpus), settings.tokenizer
    )  # the installed code fills the cache
    if corpus[split].size < 2:
        raise UserError(f"the {split} split of {settings.corpus!r} is empty")
    record = read_code_record(run_dir)
    edited = record is not None and record.hash != stock_code_hash()
    confinement = model_confinement(settings, writable=scratch, readable=(run_dir.absolute(),)) if edited else None
    env = child_env(WORKER, {"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"})
    env.pop(MODEL_CODE_ENV, None)  # the child restarts itself on the code the model carries
    scratch.mkdir(parents=True, exist_ok=True)
    log = open(scratch / "logits.log", "ab")

    def spawn(args: list[str]) -> subprocess.Popen:
        kw: dict[str, Any] = dict(
            cwd=str(scratch), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True
        )
        cmd = [sys.executable, *args]
        return run_confined(cmd, confinement, **kw) if confinement is not None else subprocess.Popen(cmd, **kw)

    try:
        return score_run(
            run_dir, corpus[split], corpus.token_bytes, settings.eval_bytes, spawn, sys.executable, timeout_s
        )
    finally:
        log.close()


def harness_scored(
    settings: RunSettings, metrics: dict[str, Any], run_dir: Path, scratch: Path, timeout_s: float
) -> tuple[dict[str, Any], float | None]:
    """The metrics to record for a model: the recorded val bpb is the harness's own score of the saved model (its code
    running apart, confined when edited); the worker's figure is kept beside it, and a worker whose figure is off is a
    failed experiment. Also the seconds the scoring took (None when it could not score)."""
    started = time.monotonic()
    try:
        scored = score_model(settings, run_dir, "val", scratch, timeout_s)
    except (ScoringRefused, ConfinementUnavailable, UserError) as err:
        return RunMetrics.failure("crashed", f"the harness could not score the model: {err}").flat(), None
    took = time.monotonic() - started
    reported = metrics["val_bpb"]
    if abs(reported - scored.bpb) > max(0.01, 0.01 * scored.bpb):
        return RunMetrics.failure(
            "crashed", f"the worker reported val bpb {reported:.4f}; the harness scores its model {scored.bpb:.4f}"
        ).flat(), took
    return {
        **metrics,
        "val_bpb": scored.bpb,
        "val_bpb_worker": reported,
        "val_bytes": scored.bytes,
        "val_causality_probes": scored.probes,
    }, took
