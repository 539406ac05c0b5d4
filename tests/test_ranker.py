"""The learned screening ranker and the statistics that judge rankers; the screener's choice of ranker.

No training here: the ranker is fitted on synthetic points, and the screener's "trained" trials are told by hand.
"""

import json
import math
import random

import numpy as np
import optuna
import pytest

from harness.data import CorpusSpec
from harness.errors import UserError
from nas.counting import count_params
from nas.proxies import PROXY_NAMES
from nas.ranker import (
    LEARNED,
    RankPoint,
    RidgeRanker,
    ScreenRanker,
    bootstrap_ci,
    load_rank_points,
    spearman,
    within_bin_spearman,
)
from nas.search_config import SearchConfig
from nas.space import get_space


def _archs(n: int, seed: int = 0, size: int | None = 400_000):
    """``n`` distinct architectures of the default space, within +-10% of ``size`` parameters (None: any size)."""
    rng = random.Random(seed)
    space = get_space("default")
    out = []
    while len(out) < n:
        a = space.sample(rng)
        if a not in out and (size is None or abs(count_params(a).total / size - 1) <= 0.1):
            out.append(a)
    return out


def _points(n: int, seed: int = 0, noise: float = 0.0, size: int | None = 400_000):
    """bpb falls with a hidden proxy ``good`` (monotone); ``junk`` is random. Both sit among the real proxy names."""
    rng = np.random.Generator(np.random.PCG64(seed))
    points = []
    for a in _archs(n, seed, size):
        good, junk = float(rng.normal()), float(rng.normal())
        proxies = {name: 0.0 for name in PROXY_NAMES} | {"synflow": good, "snip": junk}
        bpb = 5.0 - 0.3 * math.tanh(good) + noise * float(rng.normal())
        points.append(RankPoint(a, proxies, bpb))
    return points


def test_spearman_on_hand_made_ranks_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 0, 1.5, 1.5, 3 against y ranks 0, 1, 2, 3 -> Pearson of those = 0.9487
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_within_bin_spearman_ignores_the_order_between_bins():
    # inside each bin the score orders quality perfectly; across bins it is reversed (big bins score low)
    score = [10, 11, 12, 0, 1, 2]
    quality = [1, 2, 3, 11, 12, 13]
    bins = ["a", "a", "a", "b", "b", "b"]
    assert spearman(score, quality) < 0
    assert within_bin_spearman(score, quality, bins) == pytest.approx((1.0, 1.0))
    # one bin reversed: per-bin mean 0, and pooled 0 as well (equal bin sizes)
    mean, pooled = within_bin_spearman([10, 11, 12, 2, 1, 0], quality, bins)
    assert mean == pytest.approx(0.0) and pooled == pytest.approx(0.0)


def test_bootstrap_ci_is_narrow_for_a_strong_relation_and_wide_around_zero_for_noise():
    rng = np.random.Generator(np.random.PCG64(1))
    bins = np.repeat(np.arange(4), 15)
    quality = rng.normal(size=60)
    good = quality + 0.1 * rng.normal(size=60)
    junk = rng.normal(size=60)
    lo, hi = bootstrap_ci(lambda i: within_bin_spearman(good[i], quality[i], bins[i])[1], bins, rounds=300)
    assert 0.9 < lo <= hi <= 1.0
    lo, hi = bootstrap_ci(lambda i: within_bin_spearman(junk[i], quality[i], bins[i])[1], bins, rounds=300)
    assert lo < 0 < hi and hi - lo > 0.3


def test_ridge_ranker_learns_a_monotone_relation_and_beats_a_useless_feature():
    train, test = _points(40, seed=0, noise=0.02), _points(30, seed=1)
    ranker = RidgeRanker(PROXY_NAMES).fit(train)
    bpb = [p.val_bpb for p in test]
    learned = [ranker.score(p.arch, p.proxies) for p in test]
    junk = [p.proxies["snip"] for p in test]
    assert spearman(learned, [-b for b in bpb]) > 0.9
    assert abs(spearman(junk, [-b for b in bpb])) < 0.5
    w = ranker.weights()
    assert w["synflow"] < 0  # more of the good proxy predicts lower bpb
    assert abs(w["synflow"]) > 5 * abs(w["snip"])


def test_ridge_ranker_centres_each_group_so_an_offset_between_datasets_does_not_matter():
    a, b = _points(20, seed=2), _points(20, seed=3)
    other = [RankPoint(p.arch, p.proxies, p.val_bpb, group="other") for p in b]
    shifted = [RankPoint(p.arch, p.proxies, p.val_bpb + 1.5, group="other") for p in b]
    test = _points(20, seed=4)
    r1 = RidgeRanker(PROXY_NAMES).fit([*a, *other])
    r2 = RidgeRanker(PROXY_NAMES).fit([*a, *shifted])
    s1 = [r1.score(p.arch, p.proxies) for p in test]
    s2 = [r2.score(p.arch, p.proxies) for p in test]
    assert spearman(s1, s2) == pytest.approx(1.0)


def test_ridge_ranker_in_size_groups_learns_what_is_good_for_a_size_not_size_itself():
    points = []
    for p in _points(120, seed=7, size=None):
        size = math.log(count_params(p.arch).total)
        points.append(RankPoint(p.arch, p.proxies, 9.0 - 0.4 * size - 0.1 * p.proxies["synflow"]))
    test = _points(40, seed=8, size=None)
    plain = RidgeRanker(PROXY_NAMES, size_group=None).fit(points)
    grouped = RidgeRanker(PROXY_NAMES).fit(points)
    sizes = [count_params(p.arch).total for p in test]
    good = [p.proxies["synflow"] for p in test]
    assert spearman([plain.score(p.arch, p.proxies) for p in test], sizes) > 0.8  # size dominates a plain fit
    grouped_scores = [grouped.score(p.arch, p.proxies) for p in test]
    assert spearman(grouped_scores, good) > 0.8 and abs(spearman(grouped_scores, sizes)) < 0.5


def test_screen_ranker_falls_back_below_its_minimum_and_uses_the_fit_from_it():
    points = _points(20, seed=5)
    batch = [(p.arch, p.proxies) for p in _points(6, seed=6)]
    ranker = ScreenRanker(LEARNED, PROXY_NAMES, fallback="snip", min_points=12)
    few = ranker.score(batch, points[:11])
    assert few.ranker == "snip" and few.scores == [p["snip"] for _, p in batch]
    assert ranker.score(batch, points[:12]).ranker == f"{LEARNED} (ridge on 12 trained)"
    enough = ranker.score(batch, points)
    assert spearman(enough.scores, [p["synflow"] for _, p in batch]) > 0.9  # it learned the good proxy, not snip
    seeded = ScreenRanker(LEARNED, PROXY_NAMES, fallback="snip", min_points=12, seed_points=points[:10])
    assert seeded.score(batch, points[10:12]).ranker.startswith(LEARNED)
    assert ScreenRanker("flops", PROXY_NAMES, fallback="snip").score(batch, points).ranker == "flops"


def test_load_rank_points_reads_a_dataset_and_says_what_is_wrong(tmp_path):
    a = _archs(2)
    rows = [
        {"arch": a[0].model_dump(), "proxies": {"synflow": 1.0}, "runs": {"0": 4.5, "1": 4.6}},
        {"arch": a[1].model_dump(), "proxies": {"synflow": 2.0}, "runs": {"0": None}},  # crashed: left out
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"archs": rows}))
    (p,) = load_rank_points(path)
    assert p.arch == a[0] and p.val_bpb == 4.5 and p.group == str(path)
    with pytest.raises(UserError, match="not found"):
        load_rank_points(tmp_path / "missing.json")
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(UserError, match="not a proxy_correlation dataset"):
        load_rank_points(path)


def _fake_proxies(arch, x, y, seed=0):
    """Cheap stand-ins for the real proxies (which build and run each model), blind to the activation."""
    size = math.log(count_params(arch).total)
    return {name: float(arch.n_layers) for name in PROXY_NAMES} | {"synflow": -size}


def _screener(tmp_path, corpus_dir, monkeypatch, **kw):
    import nas.search_screening as screening

    monkeypatch.setattr(screening, "compute_proxies", _fake_proxies)
    from nas.objectives import parse_objectives
    from nas.search_study import SearchStudies
    from nas.trial import cached_corpus

    cfg = SearchConfig(
        out=str(tmp_path / "s"),
        space="tiny",
        strategy="random",
        trials=4,
        screen_batch=4,
        screen_proxy=LEARNED,
        corpus=CorpusSpec(source=str(corpus_dir)),
        **kw,
    )
    objectives = parse_objectives(cfg.objectives)
    studies = SearchStudies(cfg, tmp_path / "s", len(objectives), resume=False)
    corpus = cached_corpus(cfg.corpus, cfg.tokenizer)
    return screening, screening.Screener(cfg, get_space("tiny"), objectives, studies, corpus, note=lambda line: None)


def _train_by_hand(screening, screener, candidates):
    """Tell each kept candidate as trained: SwiGLU trains 0.4 bpb lower than GELU, whatever the size (what the learned
    ranker must find; the fallback proxy knows nothing of it)."""
    from nas.search_study import Outcome

    for c in candidates:
        bpb = 5.0 - 0.4 * (c.arch.activation == "swiglu") - 0.01 * math.log(count_params(c.arch).total)
        outcome = Outcome(optuna.trial.TrialState.COMPLETE, "ok", "", [bpb, 1e5], {"val_bpb": bpb})
        screener.studies.tell(1, c.number, outcome)


def test_screener_with_the_learned_ranker_falls_back_then_uses_its_fit(tmp_path, small_corpus_dir, monkeypatch):
    screening, screener = _screener(tmp_path, small_corpus_dir, monkeypatch, screen_min_fit=4, screen_keep=1.0)
    decided = []
    for _ in range(4):
        kept = screener.screen_batch()
        numbers = {c.number for c in kept}
        trained = screener.trained_points()
        fit = RidgeRanker(PROXY_NAMES).fit(trained) if len(trained) >= 4 else None
        for t in screener.studies.trials(1):
            if t.number in numbers:
                arch = screening.ArchConfig(**t.user_attrs["arch"])
                expected = fit.score(arch, t.user_attrs["proxies"]) if fit else None
                decided.append((len(trained), t.user_attrs["screen_ranker"], t.user_attrs["screen_score"], t, expected))
        _train_by_hand(screening, screener, kept)
    before = [d for d in decided if d[0] < 4]
    after = [d for d in decided if d[0] >= 4]
    assert before and after
    assert all(r == screening.FALLBACK_PROXY for _, r, _, _, _ in before)
    assert all(r == f"{LEARNED} (ridge on {n} trained)" for n, r, _, _, _ in after)
    assert all(t.user_attrs["proxies"][screening.FALLBACK_PROXY] == s for _, _, s, t, _ in before)
    # after the switch each score is the ridge fit on the trials trained by then (told above, with their proxies)
    assert all(s == pytest.approx(e) for _, _, s, _, e in after)
    assert len({round(s, 9) for _, _, s, _, _ in after}) > 1


def test_screener_drops_the_bottom_by_the_ranker_that_decided(tmp_path, small_corpus_dir, monkeypatch):
    screening, screener = _screener(tmp_path, small_corpus_dir, monkeypatch, screen_min_fit=50)
    kept = screener.screen_batch()
    dropped = [t for t in screener.studies.trials(1) if t.user_attrs.get("status") == "screened"]
    assert dropped and kept
    floor = min(
        t.user_attrs["screen_score"] for t in screener.studies.trials(1) if t.number in {c.number for c in kept}
    )
    for t in dropped:
        assert t.user_attrs["fail_reason"] == f"bottom of its batch by {screening.FALLBACK_PROXY}"
        assert t.user_attrs["screen_score"] <= floor


def test_a_missing_screening_dataset_is_one_user_error(tmp_path, small_corpus_dir, monkeypatch):
    with pytest.raises(UserError, match="screening dataset not found"):
        _screener(tmp_path, small_corpus_dir, monkeypatch, screen_dataset=str(tmp_path / "nope.json"))


def test_screening_by_front_keeps_the_small_models_a_score_alone_drops():
    from nas.search_screening import screen_order

    # scores (higher predicted better) rise with size, as proxies and a bpb ranker rate models: by score alone the
    # three biggest are kept and the front's small end is never trained
    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    sizes = [[10.0], [20.0], [30.0], [40.0], [50.0], [60.0]]
    assert screen_order(scores)[:3] == [5, 4, 3]
    front = screen_order(scores, sizes)
    assert set(front[:2]) == {0, 5}  # every one is on the predicted front; its two ends go first
    # a candidate as big as another and predicted worse is dominated: it goes after the whole front
    assert screen_order([1.0, 2.0, 1.5], [[10.0], [20.0], [20.0]])[-1] == 2
    assert screen_order(scores, [[], [], [], [], [], []]) == screen_order(scores)  # no size objective: by score
