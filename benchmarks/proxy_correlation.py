"""How well do zero-cost proxies rank architectures by trained val bits per byte?

Architectures are drawn from the default space in parameter bins (each bin +-10% around a target size),
each trained briefly on CPU with the same token budget (so the result does not depend on machine load),
then every proxy is correlated with trained val bpb: over the whole sample (across sizes, where
parameter count is known to rank well) and within each bin (where it cannot, and the search has to trade
shape against latency). Spearman and Kendall; "higher proxy = lower bpb" gives a positive correlation.

    python benchmarks/proxy_correlation.py [--per-bin 8] [--budget 100ktok]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile

import numpy as np
import torch
from _common import report
from scipy.stats import kendalltau, spearmanr

from harness.data import prepare_corpus
from nas.counting import count_params
from nas.executors import LocalExecutor
from nas.proxies import PROXY_NAMES, compute_proxies
from nas.space import get_space
from nas.trial import TrialSpec

BINS = (300_000, 700_000, 1_200_000, 2_000_000)


def sample_bins(per_bin: int, seed: int):
    space, rng, out = get_space("default"), random.Random(seed), []
    for target in BINS:
        got, seen = [], set()
        for _ in range(200_000):
            a = space.sample(rng)
            if abs(count_params(a).total / target - 1) <= 0.10 and a not in seen:
                seen.add(a)
                got.append(a)
                if len(got) == per_bin:
                    break
        out += [(target, a) for a in got]
    return out


def corr(x, y):
    s = spearmanr(x, y).statistic
    k = kendalltau(x, y).statistic
    return float(s), float(k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-bin", type=int, default=8)
    ap.add_argument("--budget", default="100ktok")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    archs = sample_bins(args.per_bin, args.seed)
    corpus = prepare_corpus()
    g = np.random.Generator(np.random.PCG64(args.seed))
    starts = g.integers(0, corpus["train"].size - 200, size=4)
    window = torch.from_numpy(np.stack([np.asarray(corpus["train"][s : s + 129], dtype=np.int64) for s in starts]))
    proxies = [compute_proxies(a, window[:, :-1], window[:, 1:], seed=0) for _, a in archs]
    proxies = [
        {**p, "params_total": float(np.log(count_params(a).total))} for p, (_, a) in zip(proxies, archs, strict=True)
    ]
    names = list(PROXY_NAMES) + ["params_total"]
    bpb: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ex = LocalExecutor(workers=args.workers)
        try:
            todo = [
                TrialSpec(
                    number=i,
                    arch=a,
                    budget=args.budget,
                    out_dir=f"{tmp}/t{i}",
                    eval_bytes=131_072,
                    measure_latency=False,
                )
                for i, (_, a) in enumerate(archs)
            ]
            while todo or len(bpb) < len(archs):
                while todo and ex.free_slots():
                    ex.submit(todo.pop(0))
                for r in ex.wait(timeout=5):
                    bpb[r.number] = r.metrics.get("val_bpb", float("nan"))
                    print(
                        f"{r.number:3d} {archs[r.number][1].describe():60s} {r.status} bpb={bpb[r.number]:.4f}",
                        flush=True,
                    )
        finally:
            ex.shutdown()
    y = [-bpb[i] for i in range(len(archs))]  # higher is better, like the proxies

    # combinations: mean of z-scored proxies
    def z(name):
        v = np.array([p[name] for p in proxies])
        return (v - v.mean()) / (v.std() + 1e-12)

    combos = {
        f"{a}+{b}": (z(a) + z(b)).tolist()
        for a, b in itertools.combinations(["params_non_embedding", "synflow", "grad_norm", "snip", "flops"], 2)
    }
    scores = {n: [p[n] for p in proxies] for n in names} | combos
    rows = []
    for name, values in scores.items():
        s_all, k_all = corr(values, y)
        within_s, within_k = [], []
        for target in BINS:
            idx = [i for i, (t, _) in enumerate(archs) if t == target]
            s, k = corr([values[i] for i in idx], [y[i] for i in idx])
            within_s.append(s)
            within_k.append(k)
        rows.append(
            {
                "proxy": name,
                "spearman_all": s_all,
                "kendall_all": k_all,
                "spearman_in_bin": statistics.fmean(within_s),
                "kendall_in_bin": statistics.fmean(within_k),
                "spearman_bins": " ".join(f"{s:+.2f}" for s in within_s),
            }
        )
    rows.sort(key=lambda r: -r["spearman_in_bin"])
    report(
        "proxy_correlation",
        f"proxies vs trained val bpb: {len(archs)} archs, {len(BINS)} bins of +-10% params, {args.budget} each",
        rows,
        {
            "archs": [
                {"bin": t, "arch": a.model_dump(), "val_bpb": bpb[i], "proxies": proxies[i]}
                for i, (t, a) in enumerate(archs)
            ]
        },
    )


if __name__ == "__main__":
    main()
