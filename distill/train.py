"""Distil a teacher into a student architecture with the ``nas`` trainer.

Token-level KD (``fkl``, ``rkl``, ``skl``, ``srkl``) runs the teacher under ``no_grad`` on each training
batch and mixes the divergence with cross-entropy; with ``topk`` set, only the teacher's top-k
log-probabilities (plus a tail bucket) are used, exactly what an API or a disk cache would give.
Sequence-level KD (``seq``, Kim & Rush 2016) trains the student with plain cross-entropy on text the
teacher wrote (an API teacher's JSONL, see :mod:`distill.api_teacher`), mixed with or replacing the
corpus' train split. Budgets, checkpoints (a killed run resumes), metrics and the validation split are
the trainer's own, so a distilled student's val bpb compares directly with one trained from scratch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from distill.api_teacher import read_generations
from distill.logit_cache import TopKLogitCache
from distill.losses import KDLossConfig, kd_loss_full, kd_loss_topk, teacher_topk
from distill.teachers import Teacher
from harness.data import CorpusSpec, TokenizedCorpus, prepare_corpus
from harness.errors import UserError
from harness.metrics import evaluate_bpb
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer, TrainOutcome

LossName = Literal["fkl", "rkl", "skl", "srkl", "seq"]
LOSSES: tuple[str, ...] = ("fkl", "rkl", "skl", "srkl", "seq")


def reconcile_student(
    student: ArchConfig, teacher: Teacher, adopt_teacher_vocab: bool, student_tokenizer_fingerprint: str | None = None
) -> ArchConfig:
    """The student architecture that shares the teacher's vocabulary, or a clear refusal naming the fix."""
    fix = (
        "pass --adopt-teacher-vocab to give the student the teacher's tokenizer, "
        "or use --loss seq (sequence-level KD needs no shared vocabulary)"
    )
    if (
        student_tokenizer_fingerprint is not None
        and student_tokenizer_fingerprint != teacher.tokenizer_fingerprint
        and not adopt_teacher_vocab
    ):
        raise UserError(
            f"the student's tokenizer differs from the teacher's ({teacher.name}); token-level KD needs "
            f"one vocabulary: {fix}"
        )
    if student.vocab_size != teacher.vocab_size:
        if not adopt_teacher_vocab:
            raise UserError(
                f"student vocab_size {student.vocab_size} differs from the teacher's tokenizer "
                f"({teacher.vocab_size} tokens, {teacher.name}); token-level KD needs one vocabulary: {fix}"
            )
        student = student.model_copy(update={"vocab_size": teacher.vocab_size})
        student = ArchConfig.model_validate(student.model_dump())
    if student.context_length > teacher.context_length:
        raise UserError(
            f"student context {student.context_length} exceeds the teacher's {teacher.context_length}: "
            "the teacher cannot score those positions; lower the student's context_length"
        )
    return student


@dataclass
class KDLossHook:
    """The trainer's loss: teacher forward without gradients, then the KD loss (full or top-k)."""

    teacher: Teacher
    loss: KDLossConfig
    topk: int | None = None
    cache: TopKLogitCache | None = None
    last_parts: dict[str, float] | None = None

    def _teacher_topk(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.topk
        cached = self.cache.get(inputs) if self.cache is not None else None
        if cached is not None:
            return cached
        with torch.no_grad():
            ids, logp = teacher_topk(self.teacher.logits(inputs).float(), self.topk)
        return self.cache.put(inputs, ids, logp) if self.cache is not None else (ids, logp)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.topk:
            ids, logp = self._teacher_topk(inputs)
            value, parts = kd_loss_topk(logits, ids, logp, targets, self.loss)
        else:
            with torch.no_grad():
                t_logits = self.teacher.logits(inputs).float()
            value, parts = kd_loss_full(logits, t_logits, targets, self.loss)
        self.last_parts = parts
        return value


def teacher_val_bpb(teacher: Teacher, corpus: TokenizedCorpus, cfg: TrainConfig, device: torch.device) -> float:
    """The teacher's own val bpb on the student's validation bytes: how far the student could go."""

    class _Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.arch = type("A", (), {"context_length": min(teacher.context_length, 4096)})()

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return teacher.logits(ids)

    return evaluate_bpb(
        _Wrap(), corpus["val"], corpus.token_bytes, cfg.eval_bytes, cfg.eval_batch_size, device, None
    ).bpb


def distill(
    teacher: Teacher,
    student: ArchConfig,
    corpus_spec: CorpusSpec,
    train: TrainConfig,
    loss: KDLossConfig,
    out: Path,
    topk: int | None = None,
    log_to_console: bool = True,
    eval_teacher: bool = True,
    cache_dir: Path | None = None,
    started: float | None = None,
) -> TrainOutcome:
    """Token-level KD of ``teacher`` into ``student`` (already reconciled) under ``train``'s budget.
    ``started`` (``time.monotonic()``) is where ``train.max_seconds`` counts from (default: now).

    With ``topk`` and ``cache_dir``, the teacher's top-k log-probs are read from / written to a disk
    cache shared by every student distilled from the same teacher."""
    if cache_dir is not None and not topk:
        raise UserError("the teacher logit cache stores top-k log-probs: give --topk with --cache-topk")
    corpus = prepare_corpus(corpus_spec, teacher.tokenizer_spec)
    if corpus.vocab_size != student.vocab_size:
        raise UserError(f"corpus tokenizer has {corpus.vocab_size} tokens, the student {student.vocab_size}")
    cache = TopKLogitCache(cache_dir, teacher.fingerprint, topk) if cache_dir is not None and topk else None
    hook = KDLossHook(teacher, loss, topk, cache)
    trainer = Trainer(
        student,
        corpus,
        train,
        out,
        corpus_spec,
        teacher.tokenizer_spec,
        log_to_console=log_to_console,
        loss_fn=hook,
        extra_record={"distill": {"teacher": teacher.name, "loss": loss.model_dump(), "topk": topk}},
    )
    if started is not None:
        trainer.started = started
    teacher.to(trainer.device)

    def extra() -> dict[str, Any]:
        m: dict[str, Any] = {
            "kind": "distill",
            "kd_teacher": teacher.name,
            "kd_loss": loss.kind,
            "kd_temperature": loss.temperature,
            "kd_ce_weight": loss.ce_weight,
            "kd_topk": topk or 0,
            "kd_teacher_params": int(getattr(teacher, "params", 0)),
        }
        if cache is not None:
            m.update({"kd_cache_hits": cache.hits, "kd_cache_misses": cache.misses})
        if hook.last_parts:
            m.update({"kd_last_ce": hook.last_parts["ce"], "kd_last_div": hook.last_parts["kd"]})
        if eval_teacher:
            m["kd_teacher_val_bpb"] = teacher_val_bpb(teacher, corpus, train, trainer.device)
        return m

    trainer.extra_metrics = extra
    return trainer.run()


def corpus_with_teacher_text(
    base: TokenizedCorpus, teacher_tokens: np.ndarray, mode: Literal["replace", "mix"]
) -> TokenizedCorpus:
    """The base corpus whose train split is the teacher's text (``replace``) or both (``mix``).

    Validation and held-out splits stay the base corpus', so val bpb is measured on the same bytes as
    every other run.
    """
    train = teacher_tokens if mode == "replace" else np.concatenate([np.asarray(base["train"]), teacher_tokens])
    fp = hashlib.sha256(f"{base.corpus_fingerprint}|{mode}|".encode() + teacher_tokens.tobytes()).hexdigest()[:16]
    return TokenizedCorpus(
        tokenizer=base.tokenizer,
        splits={**base.splits, "train": train},
        token_bytes=base.token_bytes,
        directory=base.directory,
        corpus_fingerprint=fp,
        documents=base.documents,
        text_bytes=base.text_bytes,
    )


def sequence_distill(
    teacher_jsonl: Path,
    student: ArchConfig,
    corpus_spec: CorpusSpec,
    tokenizer: str,
    train: TrainConfig,
    out: Path,
    mode: Literal["replace", "mix"] = "mix",
    log_to_console: bool = True,
    started: float | None = None,
) -> TrainOutcome:
    """Sequence-level KD: cross-entropy on the teacher's completions (prompt + completion as documents)."""
    base = prepare_corpus(corpus_spec, tokenizer)
    rows = [r for r in read_generations(teacher_jsonl) if r.get("completion")]
    if not rows:
        raise UserError(f"{teacher_jsonl} holds no teacher completions")
    tok = base.tokenizer
    dtype = np.asarray(base["val"]).dtype
    parts = []
    for r in rows:
        parts.append(np.asarray(tok.encode(r["prompt"] + r["completion"]), dtype=dtype))
        parts.append(np.array([tok.eos_id], dtype=dtype))
    corpus = corpus_with_teacher_text(base, np.concatenate(parts), mode)
    trainer = Trainer(
        student,
        corpus,
        train,
        out,
        corpus_spec,
        tokenizer,
        log_to_console=log_to_console,
        extra_record={"distill": {"teacher_data": str(Path(teacher_jsonl).resolve()), "loss": "seq", "mode": mode}},
        extra_metrics=lambda: {"kind": "distill", "kd_loss": "seq", "kd_teacher_samples": len(rows), "kd_mode": mode},
    )
    if started is not None:
        trainer.started = started
    return trainer.run()
