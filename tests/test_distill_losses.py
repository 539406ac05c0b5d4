"""KD losses against a direct float64 reference computation, on full logits and on top-k with a tail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses import KDLossConfig, kd_loss_full, kd_loss_topk, teacher_topk


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_div(p: np.ndarray, q: np.ndarray, kind: str, a: float) -> float:
    """Mean over positions of the divergence, written out term by term."""
    vals = []
    for pi, qi in zip(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]), strict=True):
        if kind == "fkl":
            vals.append(sum(pv * math.log(pv / qv) for pv, qv in zip(pi, qi, strict=True)))
        elif kind == "rkl":
            vals.append(sum(qv * math.log(qv / pv) for pv, qv in zip(pi, qi, strict=True)))
        elif kind == "skl":
            vals.append(sum(pv * math.log(pv / (a * pv + (1 - a) * qv)) for pv, qv in zip(pi, qi, strict=True)))
        else:
            vals.append(sum(qv * math.log(qv / (a * qv + (1 - a) * pv)) for pv, qv in zip(pi, qi, strict=True)))
    return float(np.mean(vals))


def _reference_ce(s: np.ndarray, labels: np.ndarray) -> float:
    q = _softmax(s).reshape(-1, s.shape[-1])
    return float(np.mean([-math.log(q[i, y]) for i, y in enumerate(labels.reshape(-1))]))


@pytest.mark.parametrize("kind", ["fkl", "rkl", "skl", "srkl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_logit_losses_match_reference(kind: str, temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 11, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 11, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 11, (2, 3), generator=g)
    cfg = KDLossConfig(kind=kind, temperature=temperature, ce_weight=0.3, skew=0.2)
    loss, parts = kd_loss_full(s, t, y, cfg)
    p, q = _softmax(t.numpy() / temperature), _softmax(s.numpy() / temperature)
    div = _reference_div(p, q, kind, 0.2)
    ce = _reference_ce(s.numpy(), y.numpy())
    assert parts["kd"] == pytest.approx(div, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(0.3 * ce + 0.7 * temperature**2 * div, rel=1e-5)


def test_identical_distributions_have_zero_divergence_and_kd_gradient_points_to_teacher() -> None:
    t = torch.randn(4, 7)
    for kind in ("fkl", "rkl", "skl", "srkl"):
        _, parts = kd_loss_full(t.clone(), t, torch.zeros(4, dtype=torch.long), KDLossConfig(kind=kind))
        assert abs(parts["kd"]) < 1e-6
    s = torch.zeros(1, 5, requires_grad=True)
    teacher = torch.tensor([[4.0, 0, 0, 0, 0]])
    loss, _ = kd_loss_full(s, teacher, torch.tensor([1]), KDLossConfig(kind="fkl", ce_weight=0.0))
    loss.backward()
    assert s.grad[0, 0] < 0 and (s.grad[0, 1:] > 0).all()  # descent raises the teacher's favourite token


@pytest.mark.parametrize("kind", ["fkl", "rkl", "skl", "srkl"])
def test_topk_with_tail_matches_bucket_reference(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    v, k = 13, 4
    s = torch.randn(3, 5, v, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, v, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, v, (3, 5), generator=g)
    ids, logp = teacher_topk(t, k)
    cfg = KDLossConfig(kind=kind, ce_weight=0.0, skew=0.1)
    _, parts = kd_loss_topk(s, ids, logp, y, cfg)
    # reference: collapse both full distributions onto the k ids + everything else
    p, q = _softmax(t.numpy()), _softmax(s.numpy())
    idn = ids.numpy()
    pb = np.concatenate([np.take_along_axis(p, idn, -1), 1 - np.take_along_axis(p, idn, -1).sum(-1, keepdims=True)], -1)
    qb = np.concatenate([np.take_along_axis(q, idn, -1), 1 - np.take_along_axis(q, idn, -1).sum(-1, keepdims=True)], -1)
    assert parts["kd"] == pytest.approx(_reference_div(pb, qb, kind, 0.1), rel=1e-5)


def test_topk_over_whole_vocab_equals_full_kd_and_tail_matters() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 6, 9, generator=g, dtype=torch.float64)
    t = torch.randn(2, 6, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 9, (2, 6), generator=g)
    cfg = KDLossConfig(kind="fkl", ce_weight=0.25)
    full, _ = kd_loss_full(s, t, y, cfg)
    ids, logp = teacher_topk(t, 9)
    topk, _ = kd_loss_topk(s, ids, logp, y, cfg)
    assert float(topk) == pytest.approx(float(full), abs=1e-6)
    # with k < V the tail bucket keeps the teacher's uncovered mass: dropping it changes the loss
    ids2, logp2 = teacher_topk(t, 2)
    with_tail, _ = kd_loss_topk(s, ids2, logp2, y, KDLossConfig(ce_weight=0.0))
    renorm = logp2 - torch.logsumexp(logp2, -1, keepdim=True)  # what ignoring the tail would claim
    without_tail, _ = kd_loss_topk(s, ids2, renorm, y, KDLossConfig(ce_weight=0.0))
    assert abs(float(with_tail) - float(without_tail)) > 1e-3


def test_mask_restricts_positions_and_vocab_mismatch_is_refused() -> None:
    s = torch.randn(1, 4, 6)
    t = torch.randn(1, 4, 6)
    y = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.tensor([[0, 0, 1, 1]])
    cfg = KDLossConfig(ce_weight=0.5)
    masked, _ = kd_loss_full(s, t, y, cfg, mask)
    only, _ = kd_loss_full(s[:, 2:], t[:, 2:], y[:, 2:], cfg)
    assert float(masked) == pytest.approx(float(only), rel=1e-6)
    with pytest.raises(ValueError, match="same vocabulary"):
        kd_loss_full(s, torch.randn(1, 4, 7), y, cfg)
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss_topk(s, torch.full((1, 4, 2), 9), torch.full((1, 4, 2), -1.0), y, cfg)


def test_markdown_fences_are_stripped_from_api_completions() -> None:
    from distill.api_teacher import strip_fences

    assert strip_fences("```python\n    return a + b\n```") == "    return a + b\n"
    assert strip_fences("```\n    return 1\n") == "    return 1\n"
    assert strip_fences("    return x  # no fence\n") == "    return x  # no fence\n"
