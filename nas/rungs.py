"""Rungs of successive halving and the noise rule that promotes between them (no torch, no Optuna: pure decisions).

A search with rungs trains every candidate at the lowest fidelity (rung 1, a fraction of ``max_budget`` tokens) and
continues the promising ones to the next rung, up to the full budget (Hyperband's successive halving, run
asynchronously as ASHA, Li et al. 2020). Plain successive halving keeps the best ``1/eta`` of a rung by its measured
values, but at low fidelity the measurement is noisy: two trainings of one architecture with two seeds differ, and
a cut that falls inside that spread is a coin toss.

So each rung's noise is **measured**: a few trials per rung are trained a second time with another seed (a
replicate), and ``sigma_k`` is the pooled standard deviation of one measurement, ``sqrt(sum(d_i^2) / 2n)`` over the
replicate differences ``d_i`` (a difference of two measurements has variance ``2 sigma^2``). The rule:

    trial c at rung k may be promoted when fewer than ``n_k // eta`` of the rung's ``n_k`` finished trials **beat**
    it, where b beats c when b is no worse on every other objective and better on bpb by more than
    ``margin = z * sigma_k * sqrt(2)`` (the spread of a difference of two measurements).

With ``sigma_k = 0`` and one objective this is exactly the top ``n_k // eta`` (ASHA's quota); with noise a trial
within noise of the cut is kept instead of being dropped by chance. With several objectives a trial beaten on bpb
but smaller than its beaters stays (the front is kept at every size). So that a large sigma cannot promote the
whole rung, promotions out of rung k are capped at ``floor(cap * (n_k // eta))`` (``cap`` >= 1, the search's default
1.5: at most half again what the noise-free rule would promote); when more qualify, the ones beaten by fewest go
first, then in NSGA-II's order (:func:`nas.pareto.rank_order`: non-dominated front, then crowding distance, the
extremes of a front first). With one objective that is bpb order; with several it spreads the promotions along the
front instead of spending them on near-twins of the best-bpb trial, so the full-budget front covers every size
(benchmarks/search_quality.py scores that front's hypervolume).

Only the rungs below the last make promotions, so only their noise is ever used: the last rung owes no replicates
(:func:`replicated_rungs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from harness.errors import UserError
from nas.pareto import rank_order

Values = Sequence[float]  # a trial's objective values, all minimised; bpb first


def parse_rungs(text: str) -> tuple[Fraction, ...]:
    """``"1/27,1/9,1/3,1"`` -> the rungs' fractions of the full budget: increasing, each in (0, 1], the last 1."""
    try:
        fractions = tuple(Fraction(part.strip()) for part in text.split(",") if part.strip())
    except (ValueError, ZeroDivisionError):
        raise UserError(f"cannot read rungs {text!r}: give fractions of the full budget, e.g. 1/27,1/9,1/3,1") from None
    if len(fractions) < 2:
        raise UserError(f"rungs {text!r}: give at least two fractions, the last 1 (e.g. 1/3,1)")
    if any(f <= 0 or f > 1 for f in fractions):
        raise UserError(f"rungs {text!r}: every fraction must lie in (0, 1]")
    if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise UserError(f"rungs {text!r}: fractions must increase")
    if fractions[-1] != 1:
        raise UserError(f"rungs {text!r}: the last rung is the full budget, 1")
    return fractions


def rung_tokens(max_tokens: int, fractions: Sequence[Fraction]) -> list[int]:
    """Cumulative tokens of each rung (at least one token each, strictly increasing)."""
    out: list[int] = []
    for f in fractions:
        out.append(max(int(round(max_tokens * f)), out[-1] + 1 if out else 1))
    return out


def replicated_rungs(n_rungs: int) -> range:
    """The rungs (1-based) whose noise is measured by replicates: every rung that promotes, i.e. all but the last.
    A replicate of the last rung would cost a full training and decide nothing."""
    return range(1, n_rungs)


def pooled_sigma(pairs: Sequence[tuple[float, float]]) -> float | None:
    """The noise of one measurement, pooled over replicate pairs ``(value, replicate value)``; None without pairs."""
    if not pairs:
        return None
    return math.sqrt(sum((a - b) ** 2 for a, b in pairs) / (2 * len(pairs)))


def noise_margin(sigma: float, z: float) -> float:
    """How much better on bpb a trial must be to count as beating another: z standard deviations of a difference."""
    return z * sigma * math.sqrt(2)


def beaten_by(values: Sequence[Values], margin: float) -> list[int]:
    """For each trial, how many others beat it (better bpb by more than ``margin``, no worse elsewhere)."""
    counts = []
    for c in values:
        counts.append(
            sum(
                1
                for b in values
                if b is not c and b[0] < c[0] - margin and all(x <= y for x, y in zip(b[1:], c[1:], strict=True))
            )
        )
    return counts


@dataclass(frozen=True)
class Promotion:
    """What the rule says about one rung: the trials (indices into its values) that qualify, best first, and how
    many promotions the rung allows in all (the cap)."""

    qualified: tuple[int, ...]
    quota: int  # n // eta: what the noise-free rule promotes
    cap: int  # most promotions out of this rung


def promotable(values: Sequence[Values], eta: int, sigma: float, z: float = 1.0, cap: float = 1.5) -> Promotion:
    """The noise rule of the module docstring over one rung's finished trials."""
    if eta < 2:
        raise ValueError("eta must be at least 2")
    if cap < 1:
        raise ValueError("the promotion cap must be at least 1 (the noise-free quota)")
    quota = len(values) // eta
    beaten = beaten_by(values, noise_margin(sigma, z))
    position = {i: k for k, i in enumerate(rank_order(values))}  # NSGA-II's order: front, then crowding
    qualified = sorted((i for i in range(len(values)) if beaten[i] < quota), key=lambda i: (beaten[i], position[i]))
    return Promotion(tuple(qualified), quota, math.floor(cap * quota))


def next_promotion(
    values: Sequence[Values], promoted: set[int], eta: int, sigma: float, z: float = 1.0, cap: float = 1.5
) -> int | None:
    """The one trial (index) to promote now out of a rung whose trials ``promoted`` already went up, or None: the
    best qualified trial not yet promoted, while the rung's cap is not reached (ASHA's ``get_job`` for one rung)."""
    rule = promotable(values, eta, sigma, z, cap)
    if len(promoted) >= rule.cap:
        return None
    return next((i for i in rule.qualified if i not in promoted), None)
