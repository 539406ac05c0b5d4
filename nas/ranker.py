"""A learned screening ranker, and the statistics that judge any screening ranker.

Why: single zero-cost proxies rank architectures of the same size poorly (``benchmarks/proxy_correlation.py``
measures it), yet the search has a few dozen trained trials whose proxies, shape and bits per byte are known. A
ridge regression on the proxies plus the architecture's own features, refit on those trials, can learn what the
proxies miss (e.g. that one norm or position scheme trains faster at this fidelity).

Invariants:

- every score is oriented like the proxies: **higher is predicted better** (a ranker predicts val bpb and scores
  its negative), so the screener sorts the same way whichever ranker decided;
- a ranker is judged by its *within-bin* rank correlation (:func:`within_bin_spearman`): architectures of about
  the same parameter count, where size alone cannot rank them, with a bootstrap confidence interval that resamples
  architectures inside their bins (:func:`bootstrap_ci`);
- numpy only: a few hundred points and ~25 features need nothing heavier, and the search's workers stay torch-only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UserError
from nas.counting import count_params
from nas.space import ArchConfig

LEARNED = "learned"  # the screen_proxy value that asks for the learned ranker
MIN_FIT_POINTS = 12  # trained trials the learned ranker needs before it replaces its fallback proxy
SIZE_GROUP = 0.2  # log-parameter width of the groups whose bpb is centred before a fit (about +-10% of a size)
RIDGE_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # picked per fit by leave-one-out error (closed form)

ARCH_FEATURES = (
    "log_params",
    "log_params_non_embedding",
    "log_d_model",
    "n_layers",
    "log_layers_per_width",
    "head_dim",
    "kv_ratio",
    "ffn_mult",
    "log_context",
    "tie_embeddings",
    "act_swiglu",
    "norm_rmsnorm",
    "pos_rope",
)


def arch_features(arch: ArchConfig) -> dict[str, float]:
    """The architecture's own features (:data:`ARCH_FEATURES`): size, shape ratios and the choice one-hots."""
    c = count_params(arch)
    return {
        "log_params": math.log(c.total),
        "log_params_non_embedding": math.log(max(c.total - c.embedding, 1)),
        "log_d_model": math.log(arch.d_model),
        "n_layers": float(arch.n_layers),
        "log_layers_per_width": math.log(arch.n_layers / arch.d_model),
        "head_dim": float(arch.head_dim),
        "kv_ratio": arch.n_heads / arch.n_kv_heads,
        "ffn_mult": arch.d_ff / arch.d_model,
        "log_context": math.log(arch.context_length),
        "tie_embeddings": float(arch.tie_embeddings),
        "act_swiglu": float(arch.activation == "swiglu"),
        "norm_rmsnorm": float(arch.norm == "rmsnorm"),
        "pos_rope": float(arch.pos == "rope"),
    }


@dataclass(frozen=True)
class RankPoint:
    """One trained architecture as a ranker sees it: its proxies (at init) and its trained val bpb."""

    arch: ArchConfig
    proxies: Mapping[str, float]
    val_bpb: float
    group: str = ""  # where the bpb was measured (a dataset, this study): each group's bpb is centred on its own mean


# -- judging a ranker ----------------------------------------------------------------------------------------------


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho (nan when either side is constant)."""
    return _pearson(_ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float)))


def within_bin_spearman(
    score: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray, bins: Sequence[object] | np.ndarray
) -> tuple[float, float]:
    """(mean of the per-bin Spearman rhos, pooled within-bin rho). ``quality`` higher = better (e.g. -bpb).

    Pooled: ranks are taken inside each bin and centred on the bin's mean rank, then correlated over all
    architectures at once, so each bin's ordering counts and the differences between bins do not."""
    s, q, b = np.asarray(score, dtype=float), np.asarray(quality, dtype=float), np.asarray(bins)
    per_bin, rs, rq = [], [], []
    for key in np.unique(b):
        idx = np.flatnonzero(b == key)
        if len(idx) < 2:
            continue
        a, c = _ranks(s[idx]), _ranks(q[idx])
        rs.append(a - a.mean())
        rq.append(c - c.mean())
        rho = _pearson(a, c)
        if not math.isnan(rho):
            per_bin.append(rho)
    mean = float(np.mean(per_bin)) if per_bin else float("nan")
    pooled = _pearson(np.concatenate(rs), np.concatenate(rq)) if rs else float("nan")
    return mean, pooled


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    bins: Sequence[object] | np.ndarray,
    rounds: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``stat(indices)`` over resamples that draw architectures with replacement *inside*
    each bin (bins keep their sizes, so a resample is the same design as the sample)."""
    b = np.asarray(bins)
    groups = [np.flatnonzero(b == key) for key in np.unique(b)]
    rng = np.random.Generator(np.random.PCG64(seed))
    values = []
    for _ in range(rounds):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = stat(idx)
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


# -- the learned ranker ---------------------------------------------------------------------------------------------


class RidgeRanker:
    """Ridge regression of val bpb on standardized proxies + architecture features; scores = -predicted bpb.

    The target is bpb centred within each size group (and each source of points): the ranker predicts how much
    better or worse than others *of its size* a model trains, which is what screening has to tell (size itself
    is the search's other objective and a hard limit, not something to screen on) and what ranked best in
    ``benchmarks/proxy_correlation.py``.

    The penalty is chosen at each fit from :data:`RIDGE_ALPHAS` by exact leave-one-out error (the hat-matrix
    shortcut), so a refit on a few dozen trials neither overfits their noise nor needs a held-out set."""

    def __init__(self, proxy_names: Sequence[str], size_group: float | None = SIZE_GROUP):
        self.proxy_names, self.size_group = tuple(proxy_names), size_group
        self.feature_names = (*self.proxy_names, *ARCH_FEATURES)
        self.alpha: float | None = None
        self._mean: np.ndarray | None = None  # feature means (missing values are filled with them)
        self._scale: np.ndarray | None = None
        self._coef: np.ndarray | None = None
        self._intercept = 0.0

    def features(self, arch: ArchConfig, proxies: Mapping[str, float]) -> np.ndarray:
        """One row: the proxies (non-finite read as missing: filled at the training mean) then the arch features."""
        row = [float(proxies.get(n, math.nan)) for n in self.proxy_names]
        row += list(arch_features(arch).values())
        return np.array([v if math.isfinite(v) else math.nan for v in row], dtype=float)

    def fit(self, points: Sequence[RankPoint]) -> RidgeRanker:
        if len(points) < 3:
            raise ValueError(f"a ridge ranker needs at least 3 points, got {len(points)}")
        X = np.stack([self.features(p.arch, p.proxies) for p in points])
        y = np.array([p.val_bpb for p in points], dtype=float)
        # bpb measured at another fidelity or corpus differs by an offset, not an order; and within a size group the
        # fit learns what makes a model good *for its size* rather than the (non-linear) size curve
        keys = [f"{p.group}/{self._size_key(p.arch)}" for p in points]
        # a model alone in its size group would be centred to 0 and teach nothing: it is centred on its source instead
        groups = np.array([k if keys.count(k) > 1 else f"{p.group}/*" for k, p in zip(keys, points, strict=True)])
        for g in np.unique(groups):
            y[groups == g] -= y[groups == g].mean()
        mean = np.nanmean(np.where(np.isnan(X), np.nan, X), axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean)
        X = np.where(np.isnan(X), mean, X)
        scale = X.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature stays 0 after centring
        Z = (X - mean) / scale
        y_mean = float(y.mean())
        yc = y - y_mean
        best: tuple[float, float, np.ndarray] | None = None
        gram = Z.T @ Z
        for alpha in RIDGE_ALPHAS:
            inv = np.linalg.inv(gram + alpha * np.eye(Z.shape[1]))
            coef = inv @ Z.T @ yc
            hat = np.einsum("ij,jk,ik->i", Z, inv, Z) + 1.0 / len(y)  # the intercept's share of the hat matrix
            loo = (yc - Z @ coef) / np.clip(1.0 - hat, 1e-6, None)
            err = float(np.mean(loo**2))
            if best is None or err < best[0]:
                best = (err, alpha, coef)
        assert best is not None
        _, self.alpha, self._coef = best
        self._mean, self._scale, self._intercept = mean, scale, y_mean
        return self

    def _size_key(self, arch: ArchConfig) -> int:
        """The size group of ``arch``: buckets of ``size_group`` in log parameters (0 for all when unset)."""
        if self.size_group is None:
            return 0
        return round(math.log(count_params(arch).total) / self.size_group)

    def predict_bpb(self, arch: ArchConfig, proxies: Mapping[str, float]) -> float:
        if self._coef is None or self._mean is None or self._scale is None:
            raise RuntimeError("the ranker is not fitted")
        x = self.features(arch, proxies)
        x = np.where(np.isnan(x), self._mean, x)
        return float(((x - self._mean) / self._scale) @ self._coef + self._intercept)

    def score(self, arch: ArchConfig, proxies: Mapping[str, float]) -> float:
        """Higher is predicted better, like every proxy."""
        return -self.predict_bpb(arch, proxies)

    def weights(self) -> dict[str, float]:
        """Standardized coefficients (on bpb: negative = the feature predicts a better model), for reports."""
        if self._coef is None:
            return {}
        return {n: float(c) for n, c in zip(self.feature_names, self._coef, strict=True)}


# -- the ranker a screening uses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScreenScores:
    """What ranked a screening batch: the ranker's name (as recorded on each trial) and one score per candidate."""

    ranker: str
    scores: list[float]


class ScreenRanker:
    """Scores a screening batch by one proxy, or by the learned ranker once enough trained points exist.

    ``name`` is a proxy name or :data:`LEARNED`. The learned ranker is refit on each call from the points it is given
    (the study's trained stage-1 trials) plus ``seed_points`` (a dataset measured earlier); with fewer than
    ``min_points`` together it falls back to ``fallback`` (the best single proxy measured)."""

    def __init__(
        self,
        name: str,
        proxy_names: Sequence[str],
        fallback: str,
        min_points: int = MIN_FIT_POINTS,
        seed_points: Sequence[RankPoint] = (),
    ):
        self.name, self.proxy_names, self.fallback = name, tuple(proxy_names), fallback
        self.min_points, self.seed_points = min_points, list(seed_points)

    def score(
        self, batch: Sequence[tuple[ArchConfig, Mapping[str, float]]], trained: Sequence[RankPoint]
    ) -> ScreenScores:
        """One score per ``(arch, proxies)`` of ``batch``, higher predicted better."""
        if self.name == LEARNED:
            points = [*self.seed_points, *trained]
            if len(points) >= self.min_points:
                ranker = RidgeRanker(self.proxy_names).fit(points)
                return ScreenScores(
                    f"{LEARNED} (ridge on {len(points)} trained)", [ranker.score(a, p) for a, p in batch]
                )
            proxy = self.fallback
        else:
            proxy = self.name
        return ScreenScores(proxy, [float(p[proxy]) for _, p in batch])


def load_rank_points(path: str | Path) -> list[RankPoint]:
    """The trained points of a dataset written by ``benchmarks/proxy_correlation.py`` (seed-0 runs that finished)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        points = [
            RankPoint(ArchConfig.model_validate(r["arch"]), r["proxies"], float(r["runs"]["0"]), group=str(p))
            for r in data["archs"]
            if r.get("runs", {}).get("0") is not None
        ]
    except FileNotFoundError:
        raise UserError(f"screening dataset not found: {p}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"screening dataset {p} is not a proxy_correlation dataset: {err}") from None
    if not points:
        raise UserError(f"screening dataset {p} holds no trained architecture")
    return points
