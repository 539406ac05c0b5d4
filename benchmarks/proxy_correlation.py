"""How well does each screening ranker order architectures of the same size by trained val bits per byte?

Architectures are drawn from the default space in parameter bins (each +-10% around a target size) and trained on
CPU with the same token budget (so the result does not depend on machine load). First a fidelity check: one
architecture per bin is trained again with a second seed, and the seed-to-seed spread of val bpb is set against the
spread between the architectures of a bin (a fidelity separates them when that ratio is well below 1). Then every
ranker is correlated with trained val bpb *within* bins (where size cannot rank): per-bin Spearman averaged, and
pooled (ranks centred per bin), each with a bootstrap 95% interval that resamples architectures inside their bins.
"Higher score = lower bpb" gives a positive correlation.

Rankers: each zero-cost proxy alone, and the learned ranker (:class:`nas.ranker.RidgeRanker` on the proxies and the
architecture's own features), scored out of fold: leave-one-bin-out (it never saw the bin it ranks) and 5-fold.

The trained dataset is written to ``results/proxy_dataset.json`` after every trial (a rerun resumes it), so rankers
can be refit without retraining:

    python benchmarks/proxy_correlation.py                       # train (about 25 min on 2 loaded cores), analyse
    python benchmarks/proxy_correlation.py --dataset benchmarks/results/proxy_dataset.json   # analyse only

Measured (results/): at 120ktok seed noise is 0.46 of the spread between architectures of a bin, at 240ktok 0.31,
so 240ktok is the fidelity the table in ``proxy_correlation.json`` is read at (``proxy_correlation_120ktok.json``
holds the other):

    python benchmarks/proxy_correlation.py --budget 240ktok --out benchmarks/results/proxy_dataset_240ktok.json \
        --transfer benchmarks/results/proxy_dataset.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, report

from harness.data import prepare_corpus
from nas.counting import count_params
from nas.executors import LocalExecutor
from nas.proxies import PROXY_NAMES, compute_proxies
from nas.ranker import (
    SIZE_GROUP,
    RankPoint,
    RidgeRanker,
    arch_features,
    bootstrap_ci,
    load_rank_points,
    within_bin_spearman,
)
from nas.space import ArchConfig, get_space
from nas.trial import TrialSpec

BINS = (100_000, 150_000, 250_000, 400_000, 600_000, 900_000)
DATASET = RESULTS / "proxy_dataset.json"
EVAL_BYTES = 65_536


def sample_bins(bins: tuple[int, ...], per_bin: int, seed: int) -> list[tuple[int, ArchConfig]]:
    """``per_bin`` distinct architectures within +-10% of each target, drawn uniformly from the space's genes."""
    space, rng, out = get_space("default"), random.Random(seed), []
    for target in bins:
        got: list[ArchConfig] = []
        for _ in range(400_000):
            a = space.sample(rng)
            if abs(count_params(a).total / target - 1) <= 0.10 and a not in got:
                got.append(a)
                if len(got) == per_bin:
                    break
        out += [(target, a) for a in got]
    return out


def proxy_window(seed: int) -> torch.Tensor:
    corpus = prepare_corpus()
    g = np.random.Generator(np.random.PCG64(seed))
    starts = g.integers(0, corpus["train"].size - 200, size=4)
    return torch.from_numpy(np.stack([np.asarray(corpus["train"][s : s + 129], dtype=np.int64) for s in starts]))


def new_dataset(args: argparse.Namespace) -> dict[str, Any]:
    archs = sample_bins(BINS, args.per_bin, args.seed)
    window = proxy_window(args.seed)
    rows = []
    for i, (target, a) in enumerate(archs):
        rows.append(
            {
                "index": i,
                "bin": target,
                "arch": a.model_dump(),
                "features": arch_features(a),
                "proxies": compute_proxies(a, window[:, :-1], window[:, 1:], seed=0),
                "runs": {},  # seed -> val bpb
            }
        )
    return {
        "budget": args.budget,
        "bins": list(BINS),
        "per_bin": args.per_bin,
        "seed": args.seed,
        "eval_bytes": EVAL_BYTES,
        "noise_per_bin": args.noise_per_bin,
        "archs": rows,
    }


def save(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def train(data: dict[str, Any], path: Path, workers: int, tmp: Path) -> None:
    """Train what the dataset lacks: seed 0 of every architecture, and seed 1 of the first ``noise_per_bin`` of each
    bin (those first, so the fidelity check is known early). Saved after each result."""
    rows = data["archs"]
    jobs: list[tuple[int, int]] = []  # (index, seed), bins interleaved so a partial run covers every bin
    by_bin: dict[int, list[int]] = {}
    for r in rows:
        by_bin.setdefault(r["bin"], []).append(r["index"])
    for k in range(data["noise_per_bin"]):
        for idx in by_bin.values():
            jobs += [(idx[k], 0), (idx[k], 1)]
    for k in range(max(len(v) for v in by_bin.values())):
        jobs += [(idx[k], 0) for idx in by_bin.values() if k < len(idx) and (idx[k], 0) not in jobs]
    jobs = [(i, s) for i, s in jobs if str(s) not in rows[i]["runs"]]
    total, t0 = len(jobs), time.time()
    print(f"{total} trainings to run at {data['budget']} with {workers} workers", flush=True)
    ex = LocalExecutor(workers=workers)
    pending: dict[int, tuple[int, int]] = {}
    try:
        n = 0
        while jobs or pending:
            while jobs and ex.free_slots():
                i, s = jobs.pop(0)
                spec = TrialSpec(
                    number=n,
                    arch=ArchConfig.model_validate(rows[i]["arch"]),
                    budget=data["budget"],
                    seed=s,
                    out_dir=str(tmp / f"a{i}_s{s}"),
                    eval_bytes=data["eval_bytes"],
                    measure_latency=False,
                )
                pending[n] = (i, s)
                ex.submit(spec)
                n += 1
            for r in ex.wait(timeout=5):
                i, s = pending.pop(r.number)
                bpb = r.metrics.get("val_bpb")
                rows[i]["runs"][str(s)] = bpb if r.status == "ok" and bpb is not None else None
                save(data, path)
                done = total - len(jobs) - len(pending)
                print(
                    f"[{done}/{total} {time.time() - t0:5.0f}s] #{i:3d} seed {s} "
                    f"{ArchConfig.model_validate(rows[i]['arch']).describe():58s} {r.status} bpb={bpb}",
                    flush=True,
                )
    finally:
        ex.shutdown()


def fidelity(data: dict[str, Any]) -> dict[str, Any]:
    """Seed noise (sd of one run, from the seed pairs) against the spread of bpb between architectures of a bin."""
    pairs = [(r["runs"]["0"], r["runs"]["1"]) for r in data["archs"] if r["runs"].get("0") and r["runs"].get("1")]
    noise = math.sqrt(statistics.fmean([(a - b) ** 2 / 2 for a, b in pairs])) if pairs else float("nan")
    spreads = []
    for target in data["bins"]:
        v = [r["runs"]["0"] for r in data["archs"] if r["bin"] == target and r["runs"].get("0")]
        if len(v) >= 2:
            spreads.append(statistics.stdev(v))
    between = statistics.fmean(spreads) if spreads else float("nan")
    return {
        "seed_pairs": len(pairs),
        "seed_sd": noise,
        "within_bin_sd": between,
        "noise_ratio": noise / between if between else float("nan"),
        "pairs": pairs,
    }


def oof_scores(
    points: list[RankPoint],
    folds: np.ndarray,
    proxy_names: tuple[str, ...],
    extra: Sequence[RankPoint] = (),
    size_group: float | None = SIZE_GROUP,
) -> np.ndarray:
    """Out-of-fold learned scores: each point scored by a ranker fitted on the other folds (and ``extra``)."""
    out = np.empty(len(points))
    for f in np.unique(folds):
        test = np.flatnonzero(folds == f)
        ranker = RidgeRanker(proxy_names, size_group).fit([*extra, *(points[i] for i in np.flatnonzero(folds != f))])
        for i in test:
            out[i] = ranker.score(points[i].arch, points[i].proxies)
    return out


def learning_curve(
    points: list[RankPoint], bins: np.ndarray, quality: np.ndarray, seed: int, splits: int = 100
) -> list[dict[str, float]]:
    """How the learned ranker ranks the held-out architectures when fitted on only ``n`` trained ones (what the
    search has early on): pooled within-bin Spearman over random splits, median and 10-90% range."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for n in (8, 12, 20, 30, 45):
        if n > len(points) - 12:
            break
        rhos = []
        for _ in range(splits):
            perm = rng.permutation(len(points))
            fit, test = perm[:n], perm[n:]
            ranker = RidgeRanker(PROXY_NAMES).fit([points[i] for i in fit])
            s = np.array([ranker.score(points[i].arch, points[i].proxies) for i in test])
            rhos.append(within_bin_spearman(s, quality[test], bins[test])[1])
        lo, med, hi = np.nanpercentile(rhos, [10, 50, 90])
        out.append(
            {"fitted_on": n, "median": round(float(med), 3), "p10": round(float(lo), 3), "p90": round(float(hi), 3)}
        )
    return out


def analyse(
    data: dict[str, Any], rounds: int, transfer: list[RankPoint] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table (one row per ranker) and the extra record; ``transfer``: points of another dataset (another budget)
    that a ranker is fitted on and then scored on this one, as ``--screen-dataset`` uses it."""
    rows = [r for r in data["archs"] if r["runs"].get("0") is not None and math.isfinite(r["runs"]["0"])]
    points = [RankPoint(ArchConfig.model_validate(r["arch"]), r["proxies"], r["runs"]["0"]) for r in rows]
    bins = np.array([r["bin"] for r in rows])
    quality = -np.array([p.val_bpb for p in points])
    scores: dict[str, np.ndarray] = {n: np.array([r["proxies"][n] for r in rows]) for n in PROXY_NAMES}
    scores["params_total"] = np.array([r["features"]["log_params"] for r in rows])
    rng = np.random.Generator(np.random.PCG64(data["seed"]))
    kfold = rng.permutation(np.arange(len(rows)) % 5)
    scores["learned (leave-one-bin-out)"] = oof_scores(points, bins, PROXY_NAMES)
    scores["learned (5-fold)"] = oof_scores(points, kfold, PROXY_NAMES)
    scores["learned, arch features only (5-fold)"] = oof_scores(points, kfold, ())
    scores["learned, raw bpb target (5-fold)"] = oof_scores(points, kfold, PROXY_NAMES, size_group=None)
    centred = [RankPoint(p.arch, p.proxies, p.val_bpb, group=str(b)) for p, b in zip(points, bins, strict=True)]
    scores["learned, bpb centred per known bin (5-fold)"] = oof_scores(centred, kfold, PROXY_NAMES, size_group=None)
    if transfer:
        ranker = RidgeRanker(PROXY_NAMES).fit(transfer)
        scores["learned, fitted on the other dataset"] = np.array([ranker.score(p.arch, p.proxies) for p in points])
        scores["learned (5-fold) + the other dataset"] = oof_scores(points, kfold, PROXY_NAMES, transfer)
    table = []
    for name, s in scores.items():
        mean, pooled = within_bin_spearman(s, quality, bins)
        lo, hi = bootstrap_ci(lambda idx, s=s: within_bin_spearman(s[idx], quality[idx], bins[idx])[1], bins, rounds)
        mlo, mhi = bootstrap_ci(lambda idx, s=s: within_bin_spearman(s[idx], quality[idx], bins[idx])[0], bins, rounds)
        per_bin = []
        for target in data["bins"]:
            idx = bins == target
            per_bin.append(within_bin_spearman(s[idx], quality[idx], bins[idx])[0] if idx.sum() > 1 else math.nan)
        table.append(
            {
                "ranker": name,
                "pooled_in_bin": round(pooled, 3),
                "pooled_ci95": f"[{lo:+.2f}, {hi:+.2f}]",
                "mean_in_bin": round(mean, 3),
                "mean_ci95": f"[{mlo:+.2f}, {mhi:+.2f}]",
                "per_bin": " ".join(f"{v:+.2f}" for v in per_bin),
            }
        )
    table.sort(key=lambda r: -r["pooled_in_bin"])
    curve = learning_curve(points, bins, quality, data["seed"])
    full = RidgeRanker(PROXY_NAMES).fit(points)
    extra = {
        "archs_trained": len(rows),
        "bins": {str(t): int((bins == t).sum()) for t in data["bins"]},
        "budget": data["budget"],
        "bootstrap_rounds": rounds,
        "fidelity": fidelity(data),
        "learning_curve": curve,
        "learned_alpha": full.alpha,
        "learned_weights": full.weights(),
        "note": "learned rankers are scored out of fold; their bootstrap resamples the out-of-fold scores "
        "(the refits are not repeated per resample)",
    }
    return table, extra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path, help="analyse this trained dataset (train what it lacks with --train)")
    ap.add_argument("--train", action="store_true", help="with --dataset: also train what the dataset lacks")
    ap.add_argument("--per-bin", type=int, default=10)
    ap.add_argument("--noise-per-bin", type=int, default=1, help="architectures per bin trained with a second seed")
    ap.add_argument("--budget", default="120ktok")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--out", type=Path, default=DATASET, help="where a new dataset is written")
    ap.add_argument("--report", default="proxy_correlation", help="results/<report>.json gets the table")
    ap.add_argument("--transfer", type=Path, help="another dataset: fit the learned ranker there, score it here")
    args = ap.parse_args()
    if args.dataset is not None:
        path = args.dataset
        data = json.loads(path.read_text())
    else:
        path = args.out
        data = json.loads(path.read_text()) if path.exists() else new_dataset(args)
        save(data, path)
    if args.dataset is None or args.train:
        tmp = Path(tempfile.gettempdir()) / f"proxy_correlation_{data['seed']}_{data['budget']}"
        train(data, path, args.workers, tmp)
    transfer = load_rank_points(args.transfer) if args.transfer else None
    table, extra = analyse(data, args.rounds, transfer)
    if args.transfer:
        extra["transfer_from"] = str(args.transfer)
    for row in extra["learning_curve"]:
        print(
            f"learned ranker fitted on {row['fitted_on']:2d} archs: held-out pooled in-bin Spearman "
            f"{row['median']:+.2f} (10-90%: {row['p10']:+.2f} .. {row['p90']:+.2f})"
        )
    f = extra["fidelity"]
    print(
        f"fidelity {data['budget']}: seed sd {f['seed_sd']:.4f} bpb over {f['seed_pairs']} pairs, "
        f"within-bin sd between archs {f['within_bin_sd']:.4f}: ratio {f['noise_ratio']:.2f}"
    )
    report(
        args.report,
        f"screening rankers vs trained val bpb within +-10% parameter bins: {extra['archs_trained']} archs, "
        f"{len(data['bins'])} bins, {data['budget']} each",
        table,
        extra,
    )


if __name__ == "__main__":
    main()
