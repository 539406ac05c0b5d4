import itertools
import random

import pytest

from harness.errors import UserError
from nas.objectives import SearchLimits, parse_objectives
from nas.pareto import crowding_distance, dominates, hypervolume, non_dominated_sort, pareto_front, rank_order
from nas.space import ArchConfig


def test_non_dominated_sort_matches_brute_force():
    rng = random.Random(0)
    pts = [(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)) for _ in range(60)]
    fronts = non_dominated_sort(pts)
    assert sorted(i for f in fronts for i in f) == list(range(60))
    brute = [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
    assert sorted(fronts[0]) == brute
    for k in range(1, len(fronts)):  # every member of front k is dominated by someone in front k-1
        for i in fronts[k]:
            assert any(dominates(pts[j], pts[i]) for j in fronts[k - 1])


def test_hypervolume_exact_values():
    assert hypervolume([(1, 5), (2, 3), (3, 4), (4, 1), (2, 2)], (5, 6)) == pytest.approx(14.0)
    assert hypervolume([(1, 5, 1), (2, 2, 2)], (5, 6, 3)) == pytest.approx(17.0)
    assert hypervolume([(6, 1)], (5, 6)) == 0.0  # outside the reference box


def test_hypervolume_matches_a_grid_count():
    rng = random.Random(1)
    pts = [(rng.random(), rng.random(), rng.random()) for _ in range(12)]
    n = 40
    inside = sum(
        1
        for c in itertools.product(range(n), repeat=3)
        if any(all((ci + 0.5) / n >= p_i for ci, p_i in zip(c, p, strict=True)) for p in pts)
    )
    assert hypervolume(pts, (1, 1, 1)) == pytest.approx(inside / n**3, abs=0.02)


def test_rank_order_puts_the_front_first():
    pts = [(3, 3), (1, 4), (4, 1), (2, 2), (5, 5)]
    order = rank_order(pts)
    assert set(order[:3]) == set(pareto_front(pts)) == {1, 2, 3}
    assert order[-1] == 4
    assert crowding_distance(pts, [1, 2, 3])[1] == float("inf")


def test_objectives_parsing():
    assert [o.metric for o in parse_objectives("bpb,bytes_int8,latency")] == [
        "val_bpb",
        "size_bytes_int8",
        "latency_ms_p50",
    ]
    for bad, msg in (
        ("bpb,speed", "unknown objective 'speed'"),
        ("bytes_int8", "must include bpb"),
        ("bpb,bpb", "twice"),
        ("", "no objectives"),
    ):
        with pytest.raises(UserError, match=msg):
            parse_objectives(bad)


def test_size_limits():
    lim = SearchLimits(max_mb=1.0, max_params=2_000_000)
    v = lim.size_violations(ArchConfig())  # ~1.1 MB at int8, 1.08M parameters
    assert v["size"] > 0 and v["params"] < 0
    assert lim.latency_violation(3.0) == -1.0  # no latency limit set
