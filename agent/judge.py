"""The metric judge: keep an experiment only when it beats the incumbent by more than run-to-run noise.

The noise is measured, not assumed: the graph repeats the first kept model with another seed, whoever
plans, and every later re-run of a close call adds to the estimate (pooled standard deviation of repeated
configurations). A result that would win by less than ``k`` noise standard deviations is a *close call*:
the graph re-runs it with another seed, and the mean of the repeats decides. In the best-known public
loop a pure seed change was once kept as an improvement; this rule is what prevents that.

A latency limit is judged on the robust statistic (median of per-repeat medians); a measurement whose
per-repeat medians straddle the limit is taken again (:func:`settle_latency`), not rejected.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from agent.goal import Goal

# every decision the loop records: the judge's four, and "repeat" (a noise repeat of the incumbent, which only measures)
Decision = Literal["keep", "discard", "close", "crash", "repeat"]
MIN_NOISE = 0.002  # bits per byte: below this the estimate from two runs is not trusted


class Verdict(BaseModel):
    decision: Decision
    reason: str
    metric: float | None = None
    delta: float | None = None  # candidate - incumbent (negative is better)
    noise: float | None = None


def settled(done: bool, reason: str, metric: float | None = None) -> Verdict:
    """The verdict of a kind the metric rule does not judge (a search, a compression, an evaluation): kept when the
    worker did its job, a crash when it did not; ``reason`` says which."""
    return Verdict(decision="keep" if done else "crash", reason=reason, metric=metric)


def violations(goal: Goal, metrics: dict[str, Any]) -> list[str]:
    out = []
    if goal.max_mb is not None and metrics.get("size_bytes_int8", 0) > goal.max_mb * 1e6:
        out.append(f"int8 size {metrics['size_bytes_int8'] / 1e6:.2f} MB > {goal.max_mb:g} MB")
    # latency_ms_p50 is the robust statistic: the median of the per-repeat medians (harness.metrics.measure_latency)
    if goal.max_latency_ms is not None and metrics.get("latency_ms_p50", 0) > goal.max_latency_ms:
        out.append(
            f"latency {metrics['latency_ms_p50']:.2f} ms > {goal.max_latency_ms:g} ms"
            + (
                f" (median of {metrics['latency_remeasures'] + 1} measurements)"
                if metrics.get("latency_remeasures")
                else ""
            )
        )
    if goal.max_params is not None and metrics.get("params", 0) > goal.max_params:
        out.append(f"{metrics['params']:,} parameters > {goal.max_params:,}")
    return out


LATENCY_REMEASURES = (
    3  # fresh measurements of a result whose latency spread straddles the limit, before the median decides
)


def latency_undecided(limit_ms: float | None, metrics: dict[str, Any]) -> bool:
    """True when the per-repeat medians of one measurement fall on both sides of the limit: the session was too
    noisy (a busy machine) to say whether the model meets it, so it is measured again rather than rejected."""
    lo, hi = metrics.get("latency_ms_p50_min"), metrics.get("latency_ms_p50_max")
    if limit_ms is None or not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return False
    return lo <= limit_ms < hi


def settle_latency(
    limit_ms: float | None,
    metrics: dict[str, Any],
    remeasure: Callable[[int], dict[str, Any] | None],
    max_remeasures: int = LATENCY_REMEASURES,
) -> dict[str, Any]:
    """The metrics the latency limit is judged on. A measurement that decides (its spread is on one side of the
    limit) is taken as it is; else ``remeasure(i)`` gives fresh measurements (None: it failed) until one decides,
    and after ``max_remeasures`` the median of all the sessions' robust statistics decides."""
    if not latency_undecided(limit_ms, metrics):
        return metrics
    sessions = [float(metrics["latency_ms_p50"])]
    for i in range(1, max_remeasures + 1):
        fresh = remeasure(i)
        if not fresh or not isinstance(fresh.get("latency_ms_p50"), (int, float)):
            break
        sessions.append(float(fresh["latency_ms_p50"]))
        if not latency_undecided(limit_ms, fresh):
            return {**metrics, **fresh, "latency_remeasures": i, "latency_ms_p50_first": sessions[0]}
    return {
        **metrics,
        "latency_ms_p50": statistics.median(sessions),
        "latency_remeasures": len(sessions) - 1,
        "latency_ms_p50_first": sessions[0],
    }


def noise_estimate(groups: list[list[float]]) -> float | None:
    """Pooled standard deviation of val bpb over groups of repeated configurations (None without repeats)."""
    num, dof = 0.0, 0
    for g in groups:
        if len(g) >= 2:
            num += statistics.variance(g) * (len(g) - 1)
            dof += len(g) - 1
    return max(math.sqrt(num / dof), MIN_NOISE) if dof else None


def judge(
    goal: Goal,
    metrics: dict[str, Any] | None,
    incumbent_bpb: float | None,
    noise: float | None,
    repeats: int = 1,
    k: float = 2.0,
) -> Verdict:
    """Keep, discard, close call (re-run with another seed) or crash, from metrics.json alone."""
    if not metrics or metrics.get("status") != "ok" or not isinstance(metrics.get("val_bpb"), (int, float)):
        reason = (metrics or {}).get("fail_reason") or "the worker wrote no usable metrics.json"
        return Verdict(decision="crash", reason=str(reason))
    bpb = float(metrics["val_bpb"])
    broken = violations(goal, metrics)
    if broken:
        return Verdict(decision="discard", reason="breaks the goal's limits: " + "; ".join(broken), metric=bpb)
    if incumbent_bpb is None:
        return Verdict(decision="keep", reason="first result within the limits", metric=bpb, noise=noise)
    delta = bpb - incumbent_bpb
    sigma = noise if noise is not None else MIN_NOISE
    # the mean of n repeats has standard error sigma / sqrt(n); the incumbent is itself a mean
    threshold = k * sigma * math.sqrt(1.0 / max(repeats, 1) + 1.0)

    def compared(decision: Decision, reason: str) -> Verdict:
        """A verdict against the incumbent: it carries the figures it was decided on."""
        return Verdict(decision=decision, reason=reason, metric=bpb, delta=delta, noise=noise)

    if delta < -threshold:
        return compared("keep", f"beats the incumbent by {-delta:.4f} bpb (> {threshold:.4f}, {k:g} sigma)")
    if delta < 0 and repeats < 3:
        return compared(
            "close", f"better by {-delta:.4f} bpb, within noise ({threshold:.4f}): re-run with another seed"
        )
    return compared(
        "discard", f"not better than the incumbent beyond noise (delta {delta:+.4f}, threshold {threshold:.4f})"
    )
