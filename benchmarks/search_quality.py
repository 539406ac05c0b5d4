"""Hypervolume reached by each search strategy at equal compute: the same tokens trained in all, not the same trials.

Strategies (all on the tiny space, screening off, so only the strategy differs):

- ``random``, ``nsga2``, ``evolution``: every trial trained to ``--max-budget`` (one fidelity, no stage 2);
- ``rungs-random``: random candidates with rungs (``--rungs`` of ``--max-budget``, ASHA with the measured-noise
  rule): Hyperband-like, the strong baseline a user would pick;
- ``rungs-evolution``: aging evolution with rungs, children starting from their parents' weights (``--inherit``).

Each search stops at ``--token-budget`` tokens trained by all its trials (replicates and promotions included) and
runs in a fresh process (``python -m nas nas search``); the strategies' order is rotated from seed to seed. The
hypervolume of each search's final (val bpb, int8 bytes) front is taken against a fixed reference point (bpb 8 =
untrained, 1.05 x the largest int8 size in the space) after normalising both axes to [0, 1]. Each strategy reports the
mean over ``--seeds`` seeds with a 95 % Student-t confidence interval (mean +- t(0.975, n-1) * s / sqrt(n)). The
compared figure is hypervolume per token, so the machine's load does not enter it; wall seconds are shown for scale.

    python benchmarks/search_quality.py [--seeds 5] [--token-budget 400ktok] [--max-budget 27ktok]
    python benchmarks/search_quality.py --trials 16 --strategies nsga2,evolution,random   # the old equal-trials form
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, report, thread_env
from scipy.stats import t as student_t

from nas.counting import size_bytes
from nas.pareto import hypervolume
from nas.space import get_space

STRATEGIES = ("random", "nsga2", "evolution", "rungs-random", "rungs-evolution")


def largest_int8_bytes(space_name: str) -> int:
    space = get_space(space_name)
    genes = {
        name: max(getattr(space, name)) if name not in ("activation", "norm", "pos", "tie_embeddings") else None
        for name in ("n_layers", "d_model", "head_dim", "kv_ratio", "ffn_mult", "vocab_size", "context_length")
    }
    genes.update(
        activation="swiglu" if "swiglu" in space.activation else space.activation[0],
        norm="layernorm" if "layernorm" in space.norm else space.norm[0],
        pos="learned" if "learned" in space.pos else space.pos[0],
        tie_embeddings=False if False in space.tie_embeddings else True,
    )
    genes["kv_ratio"] = min(space.kv_ratio)
    return size_bytes(space.decode(genes), "int8")


def search_args(strategy: str, seed: int, out: Path, args: argparse.Namespace) -> list[str]:
    """The CLI flags of one search: the same data, space, workers and stop for every strategy."""
    base = strategy.removeprefix("rungs-")
    flags = [
        *("--out", str(out), "--space", args.space, "--strategy", base, "--seed", str(seed)),
        *("--workers", str(args.workers), "--batch-size", "8", "--eval-bytes", "65536", "--corpus", args.corpus),
        *("--population", "6", "--no-screen", "--quiet"),
    ]
    if args.token_budget:
        flags += ["--token-budget", args.token_budget]
    else:
        flags += ["--trials", str(args.trials)]
    if strategy.startswith("rungs-"):
        flags += ["--rungs", args.rungs, "--max-budget", args.max_budget, "--eta", "3"]
        if base == "evolution":
            flags += ["--inherit"]
    else:
        flags += ["--stage1", args.max_budget, "--stage2", "none"]
    return flags


def run_search(strategy: str, seed: int, args: argparse.Namespace) -> tuple[dict, float]:
    """One search in a fresh process; its pareto.json and wall seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s"
        cmd = [sys.executable, "-m", "nas", "nas", "search", *search_args(strategy, seed, out, args)]
        t0 = time.perf_counter()
        # the driver re-measures its front's latency: one thread, or on a loaded machine two spin against each other
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=thread_env(1))
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{strategy} seed {seed} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return json.loads((out / "pareto.json").read_text()), secs


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % Student-t interval)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.inf
    return mean, float(student_t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--token-budget", default="400ktok", help="tokens per search, all trials; '' for --trials")
    ap.add_argument("--trials", type=int, default=16, help="trials per search when --token-budget is ''")
    ap.add_argument("--max-budget", default="27ktok", help="tokens of a full training (the last rung)")
    ap.add_argument("--rungs", default="1/9,1/3,1")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}: choose from {', '.join(STRATEGIES)}")
    ref_bytes = largest_int8_bytes(args.space) * 1.05
    hvs: dict[str, list[float]] = {s: [] for s in strategies}
    secs: dict[str, list[float]] = {s: [] for s in strategies}
    tokens: dict[str, list[int]] = {s: [] for s in strategies}
    for seed in range(args.seeds):
        order = strategies[seed % len(strategies) :] + strategies[: seed % len(strategies)]  # rotated per seed
        for strategy in order:
            summary, wall = run_search(strategy, seed, args)
            pts = [(m["objectives"]["bpb"] / 8.0, m["objectives"]["bytes_int8"] / ref_bytes) for m in summary["front"]]
            hvs[strategy].append(hypervolume(pts, (1.0, 1.0)))
            secs[strategy].append(wall)
            tokens[strategy].append(int(summary.get("tokens_trained", 0)))
            print(
                f"{strategy} seed {seed}: hv={hvs[strategy][-1]:.4f} front={len(pts)} "
                f"tokens={tokens[strategy][-1]:,} in {wall:.0f}s",
                flush=True,
            )
    rows = []
    for strategy in strategies:
        mean, half = t_interval(hvs[strategy])
        rows.append(
            {
                "strategy": strategy,
                "seeds": len(hvs[strategy]),
                "hv_mean": mean,
                "hv_ci95_low": mean - half,
                "hv_ci95_high": mean + half,
                "hv_std": statistics.stdev(hvs[strategy]) if len(hvs[strategy]) > 1 else 0.0,
                "tokens_mean": statistics.fmean(tokens[strategy]),
                "search_s_median": statistics.median(secs[strategy]),
            }
        )
    stop = f"{args.token_budget} per search" if args.token_budget else f"{args.trials} trials"
    report(
        "search_quality",
        f"hypervolume (bpb/8, int8 bytes) at {stop}, {args.space} space, full training {args.max_budget}, "
        f"rungs {args.rungs}, mean and 95% t-interval over {args.seeds} seeds",
        rows,
        {
            "hypervolumes": hvs,
            "tokens_trained": tokens,
            "search_s": secs,
            "reference_bytes": ref_bytes,
            "args": vars(args),
        },
    )


if __name__ == "__main__":
    main()
