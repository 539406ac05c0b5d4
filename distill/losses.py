"""Knowledge-distillation losses on full logits and on stored top-k log-probabilities.

Divergences between the teacher distribution ``p`` and the student ``q`` (both at temperature ``T``):

- ``fkl``  forward KL(p || q), Hinton et al. 2015: mode-covering, the classic choice;
- ``rkl``  reverse KL(q || p), MiniLLM (Gu et al. 2024): mode-seeking, suits small students;
- ``skl``  skew forward KL(p || a p + (1-a) q), DistiLLM (Ko et al. 2024): bounded gradients early on;
- ``srkl`` skew reverse KL(q || a q + (1-a) p), DistiLLM.

Each is scaled by ``T^2`` (so gradients keep their size as T changes) and mixed with the usual
next-token cross-entropy: ``loss = ce_weight * CE + (1 - ce_weight) * T^2 * D``.

With only the teacher's top-k log-probabilities (a server returns at most 20), both distributions are
collapsed onto k + 1 buckets: the k tokens and a tail bucket holding the rest of the mass, as TRL's
server-side distillation does. Without the tail the top-k renormalisation overstates the teacher's
confidence. A temperature other than 1 is applied to the buckets (the tail as one bucket), which is
exact for the k tokens' relative odds and an approximation for the tail.

This is the project's one KD loss: the distillation trainer and the compressor's recovery fine-tune
(:func:`kernels.compress.distill_loss_from`) both use it. On full logits, forward KL without a mask runs
the fused Triton kernel of :mod:`triton_ops.ops` where Triton runs (CUDA tensors), this file's formula
elsewhere.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from triton_ops import use_triton

Divergence = Literal["fkl", "rkl", "skl", "srkl"]
DIVERGENCES: tuple[str, ...] = ("fkl", "rkl", "skl", "srkl")
_EPS = 1e-12


class KDLossConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Divergence = "fkl"
    temperature: float = Field(1.0, gt=0, le=20)
    ce_weight: float = Field(0.5, ge=0, le=1, description="weight of the hard-label cross-entropy")
    skew: float = Field(0.1, ge=0, lt=1, description="DistiLLM's alpha for skl / srkl")


def divergence_from_logprobs(t_logp: torch.Tensor, s_logp: torch.Tensor, kind: str, skew: float = 0.1) -> torch.Tensor:
    """Per-position divergence between two normalised log-distributions over the last dimension."""
    if kind == "fkl":
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "rkl":
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    if kind == "skl":
        mix = torch.logaddexp(
            t_logp + math.log(skew) if skew > 0 else torch.full_like(t_logp, -math.inf), s_logp + math.log(1 - skew)
        )
        return (t_logp.exp() * (t_logp - mix)).sum(-1)
    if kind == "srkl":
        mix = torch.logaddexp(
            s_logp + math.log(skew) if skew > 0 else torch.full_like(s_logp, -math.inf), t_logp + math.log(1 - skew)
        )
        return (s_logp.exp() * (s_logp - mix)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}: use one of {', '.join(DIVERGENCES)}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def _ce(student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    per = F.cross_entropy(
        student_logits.float().reshape(-1, student_logits.size(-1)), labels.reshape(-1), reduction="none"
    )
    return _masked_mean(per.view(labels.shape), mask)


def kd_loss_full(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: KDLossConfig,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KD on full logits ``[..., V]`` (teacher and student share the vocabulary); returns (loss, parts)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: token-level KD needs the same vocabulary"
        )
    t = cfg.temperature
    if cfg.kind == "fkl" and mask is None and use_triton(student_logits, teacher_logits):
        # The fused kernel streams the vocabulary and keeps no [rows, V] log-probs for the backward; it is
        # checked against the same formula (tests/test_triton.py). It includes T^2, which is applied below.
        # Imported here on purpose: triton is heavy and optional, and @triton.jit reads TRITON_INTERPRET when
        # the kernels are defined, so importing them with this module would fix that choice too early.
        from triton_ops.ops import fused_fkl

        div = fused_fkl(student_logits.float(), teacher_logits.float(), t) / (t * t)
    else:
        s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
        t_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
        div = _masked_mean(divergence_from_logprobs(t_logp, s_logp, cfg.kind, cfg.skew), mask)
    ce = _ce(student_logits, labels, mask)
    loss = cfg.ce_weight * ce + (1 - cfg.ce_weight) * t * t * div
    return loss, {"ce": float(ce.detach()), "kd": float(div.detach())}


def topk_bucket_logprobs(teacher_topk_logp: torch.Tensor) -> torch.Tensor:
    """Teacher top-k log-probs ``[..., k]`` -> log-probs over k + 1 buckets (the last is the tail)."""
    lp = teacher_topk_logp.float()
    covered = torch.logsumexp(lp, dim=-1, keepdim=True).clamp_max(0.0)
    tail = torch.log((-torch.expm1(covered)).clamp_min(_EPS))  # log(1 - sum p_k), stable near 1
    return torch.cat([lp, tail], dim=-1)


def student_bucket_logprobs(student_logits: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Student log-probs on the teacher's k tokens plus the tail (all other tokens), ``[..., k + 1]``."""
    logits = student_logits.float()
    total = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, topk_ids.long())
    rest = logits.scatter(-1, topk_ids.long(), -math.inf)
    tail = torch.logsumexp(rest, dim=-1, keepdim=True)
    out = torch.cat([picked, tail], dim=-1) - total
    # k == V leaves an empty tail (log 0): floor it like the teacher's so 0 * log 0 terms stay 0, not nan
    return torch.cat([out[..., :-1], out[..., -1:].clamp_min(math.log(_EPS))], dim=-1)


def _retemper(bucket_logp: torch.Tensor, t: float) -> torch.Tensor:
    return bucket_logp if t == 1.0 else F.log_softmax(bucket_logp / t, dim=-1)


def kd_loss_topk(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logp: torch.Tensor,
    labels: torch.Tensor,
    cfg: KDLossConfig,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KD against stored teacher top-k log-probs (``topk_ids``/``topk_logp``: ``[..., k]``) with a tail bucket."""
    if topk_ids.shape != topk_logp.shape or topk_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k ids {tuple(topk_ids.shape)} / log-probs {tuple(topk_logp.shape)} do not match "
            f"student logits {tuple(student_logits.shape)}"
        )
    if int(topk_ids.max()) >= student_logits.size(-1):
        raise ValueError(
            f"teacher token id {int(topk_ids.max())} is outside the student's vocabulary "
            f"({student_logits.size(-1)}): token-level KD needs the same vocabulary"
        )
    t = cfg.temperature
    t_b = _retemper(topk_bucket_logprobs(topk_logp), t)
    s_b = _retemper(student_bucket_logprobs(student_logits, topk_ids), t)
    div = _masked_mean(divergence_from_logprobs(t_b, s_b, cfg.kind, cfg.skew), mask)
    ce = _ce(student_logits, labels, mask)
    loss = cfg.ce_weight * ce + (1 - cfg.ce_weight) * t * t * div
    return loss, {"ce": float(ce.detach()), "kd": float(div.detach())}


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a server would return: the k most likely ids and their log-probs (temperature 1)."""
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return ids, values
