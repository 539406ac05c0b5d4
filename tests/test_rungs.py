"""Rungs (nas.rungs): the noise rule on hand-made values, and a small search with three rungs end to end."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from harness.data import CorpusSpec
from harness.errors import UserError
from nas.rungs import (
    beaten_by,
    next_promotion,
    noise_margin,
    parse_rungs,
    pooled_sigma,
    promotable,
    replicated_rungs,
    rung_tokens,
)
from nas.search import Search, SearchConfig
from nas.search_study import grow_genes
from nas.space import get_space


def test_rungs_parse_and_budgets() -> None:
    assert parse_rungs("1/27, 1/9,1/3,1") == (Fraction(1, 27), Fraction(1, 9), Fraction(1, 3), Fraction(1))
    assert rung_tokens(270_000, parse_rungs("1/27,1/9,1/3,1")) == [10_000, 30_000, 90_000, 270_000]
    for bad, word in (("1/3", "at least two"), ("1/3,1/9,1", "increase"), ("1/3,1/2", "last rung"), ("a,1", "read")):
        with pytest.raises(UserError, match=word):
            parse_rungs(bad)


def test_pooled_sigma_is_the_noise_of_one_measurement() -> None:
    assert pooled_sigma([]) is None
    # differences 0.2 and 0.0: var(one measurement) = (0.04 + 0) / (2 * 2) = 0.01
    assert pooled_sigma([(1.0, 1.2), (2.0, 2.0)]) == pytest.approx(0.1)
    assert noise_margin(0.1, 1.0) == pytest.approx(0.1 * 2**0.5)


def test_sigma_zero_is_plain_top_k() -> None:
    values = [[v] for v in (1.5, 1.1, 1.9, 1.3, 1.7, 1.2, 2.0, 1.4, 1.6)]  # nine trials, eta 3: the best three
    rule = promotable(values, eta=3, sigma=0.0)
    assert rule.quota == 3 and rule.qualified == (1, 5, 3)
    assert promotable(values[:2], eta=3, sigma=0.0).qualified == ()  # fewer than eta: nothing yet (ASHA)


def test_within_noise_is_kept_and_clearly_worse_is_dropped() -> None:
    # the cut (1/3 of six = 2) falls between 1.02 and 1.03: plain top-2 would drop 1.03 on a 0.01 difference
    values = [[1.00], [1.02], [1.03], [1.04], [1.60], [1.80]]
    assert promotable(values, eta=3, sigma=0.0).qualified == (0, 1)
    rule = promotable(values, eta=3, sigma=0.02, z=1.0)  # margin 0.028: 1.03 and 1.04 are within noise of the best
    assert set(rule.qualified) == {0, 1, 2, 3}
    assert 4 not in rule.qualified and 5 not in rule.qualified  # clearly worse: beaten by all four by > margin
    assert beaten_by(values, noise_margin(0.02, 1.0))[4] == 4


def test_a_smaller_trial_is_not_beaten_by_a_bigger_one() -> None:
    # (bpb, bytes): the tiny model is worst on bpb but nothing as small beats it
    values = [[1.0, 100.0], [1.1, 90.0], [1.2, 80.0], [2.5, 10.0], [1.9, 95.0], [2.0, 99.0]]
    assert 3 in promotable(values, eta=3, sigma=0.0).qualified
    assert 5 not in promotable(values, eta=3, sigma=0.0).qualified


def test_the_cap_holds_under_huge_noise() -> None:
    values = [[1.0 + 0.1 * i] for i in range(9)]
    rule = promotable(values, eta=3, sigma=10.0, cap=2.0)  # everything is within noise: all qualify
    assert len(rule.qualified) == 9 and rule.cap == 6
    promoted: set[int] = set()
    while (i := next_promotion(values, promoted, eta=3, sigma=10.0, cap=2.0)) is not None:
        promoted.add(i)
    assert promoted == {0, 1, 2, 3, 4, 5}  # the cap, best first
    assert next_promotion(values, {0, 1, 2}, eta=3, sigma=0.0) is None  # the noise-free three went up already


def test_ties_go_up_in_nsga2_order_so_the_front_spreads() -> None:
    # (bpb, bytes), all six on one front (none beaten): three near-twins of the best bpb, then smaller models.
    # bpb order would spend a cap of 3 on the three big twins; NSGA-II's order takes the front's two ends first
    # (infinite crowding distance), then the most isolated middle point.
    values = [[1.00, 100.0], [1.01, 99.0], [1.02, 98.0], [1.30, 60.0], [1.60, 30.0], [2.50, 10.0]]
    rule = promotable(values, eta=2, sigma=0.0, cap=1.0)
    assert rule.quota == 3 and set(rule.qualified) == set(range(6))
    promoted: set[int] = set()
    while (i := next_promotion(values, promoted, eta=2, sigma=0.0, cap=1.0)) is not None:
        promoted.add(i)
    assert promoted == {0, 5, 4}  # not {0, 1, 2}
    # fewer beaters still goes first: a dominated trial never jumps a front member
    values.append([1.015, 99.5])  # beaten by trial 1 only
    assert promotable(values, eta=2, sigma=0.0).qualified[-1] == 6


def test_only_promoting_rungs_are_replicated() -> None:
    assert list(replicated_rungs(4)) == [1, 2, 3]  # rung 4, the full budget, promotes nothing: no replicate
    assert list(replicated_rungs(2)) == [1]


def test_growth_mutation_only_grows() -> None:
    space = get_space("tiny")
    rng = random.Random(0)
    parent = space.decode(dict(space.encode(space.smallest())))
    for _ in range(20):
        child = grow_genes(space, parent, rng)
        assert child is not None
        assert (child.n_layers > parent.n_layers) != (child.d_ff > parent.d_ff)
        assert child.d_model == parent.d_model and child.n_heads == parent.n_heads


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The search re-measures its front's latency in this process: on a loaded two-core machine two threads spin
    against each other (minutes instead of seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_search_with_three_rungs(tmp_path: Path, small_corpus_dir: Path, one_thread: None) -> None:
    """Promotes through every rung, measures every rung's noise, records starts (children grown from their parents)
    and cumulative tokens, and stays within its token budget."""
    out = tmp_path / "s"
    space = get_space("tiny").model_copy(
        update={
            "n_layers": (1, 2, 3, 4, 5),
            "d_model": (32, 48),
            "ffn_mult": (2.0, 3.0, 4.0, 5.0),
            "context_length": (64,),
        }
    )
    (tmp_path / "space.json").write_text(space.model_dump_json())
    cfg = SearchConfig(
        out=str(out),
        space=str(tmp_path / "space.json"),
        strategy="evolution",
        inherit=True,
        grow_share=1.0,
        trials=6,
        rungs="1/4,1/2,1",
        max_budget="16ktok",
        token_budget="200ktok",
        eta=2,
        replicates=1,
        screen=False,
        screen_batch=1,  # ask one candidate at a time: children of the first three, not a random batch
        population=3,
        tournament=2,
        eval_bytes=4000,
        batch_size=8,
        workers=2,
        corpus=CorpusSpec(source=str(small_corpus_dir)),
        export_hf=False,
    )
    summary = Search(cfg, live=False).run()
    with open(out / "results.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    trials = [r for r in rows if not r["replicate"]]
    by_stage = {k: [r for r in trials if r["stage"] == str(k) and r["status"] == "ok"] for k in (1, 2, 3)}
    assert len(by_stage[1]) == 6 and by_stage[2] and by_stage[3]
    for k in (1, 2):  # never more promotions than the cap allows for the rung's final count (eta 2, cap 1.5)
        assert len(by_stage[k + 1]) <= int(1.5 * (len(by_stage[k]) // 2))
    for k, trained in ((2, 4096), (3, 8192)):  # rung k's trials continue their parents by the rungs' difference
        parents = {int(r["trial"]): r for r in by_stage[k - 1]}
        for r in by_stage[k]:
            parent = parents[int(r["parent"])]
            assert r["init"] == f"continued from s{k - 1}-{int(r['parent']):05d}" and r["arch"] == parent["arch"]
            assert int(r["tokens_trained"]) == trained  # whole steps of 8 x 64 tokens
            assert int(r["tokens_cumulative"]) == int(parent["tokens_cumulative"]) + trained
    children = [r for r in by_stage[1] if r["parent"]]
    assert children and all(r["init"].startswith(("parent s1-", "scratch")) for r in children)
    assert any("deeper" in r["init"] or "wider FFN" in r["init"] for r in children)  # growth: inherited
    inherited = [r for r in children if r["init"].startswith("parent")]
    assert all(int(r["tokens_cumulative"]) > int(r["tokens_trained"]) for r in inherited)
    rungs = json.loads((out / "rungs.json").read_text())
    assert [n["tokens"] for n in rungs["noise"]] == [4000, 8000, 16000]
    # the promoting rungs' noise is measured; the last rung's would decide nothing, so it costs no replicate
    assert [(n["replicate_pairs"], n["sigma_bpb"] is not None) for n in rungs["noise"]] == [
        (1, True),
        (1, True),
        (0, False),
    ]
    assert [r["stage"] for r in rows if r["replicate"] == "1"] == ["1", "2"]
    assert summary["rungs"]["noise"] == rungs["noise"]
    # every training counts once (a duplicate shows its twin's metrics but trained nothing), within the budget
    trained = sum(int(r["tokens_trained"] or 0) for r in rows if r["status"] != "duplicate")
    assert summary["tokens_trained"] == trained <= 200_000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sigma_bpb_rung1"] == rungs["noise"][0]["sigma_bpb"]
