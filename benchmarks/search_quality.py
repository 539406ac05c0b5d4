"""Hypervolume reached by each search strategy at equal compute: the same tokens trained in all, not the same trials.

Strategies (all on the tiny space; screening off unless ``--rung-flags`` turns it on for the rung strategies):

- ``random``, ``nsga2``, ``evolution``: every trial trained to ``--max-budget`` (one fidelity, no stage 2);
- ``rungs-random``: random candidates with rungs (``--rungs`` of ``--max-budget``, ASHA with the measured-noise
  rule): Hyperband-like, the strong baseline a user would pick;
- ``rungs-evolution``: aging evolution with rungs (children start from their parents' weights with ``--inherit``).

Each search stops at ``--token-budget`` tokens trained by all its trials (replicates and promotions included) and
runs in a fresh process (``python -m nas nas search``), ``--jobs`` of them at a time; the strategies' order is rotated
from seed to seed, seed after seed, so ``--time-limit-min`` (no search starts after it) ends the benchmark with whole
seeds: the table keeps the seeds every strategy finished. ``--rung-flags`` are added to the rung strategies' command
lines (e.g. ``--replicates 0 --screen --screen-proxy learned``): the flat strategies stay plain, as a user would run
them.

**Only full trainings are scored.** A search's hypervolume is that of the (val bpb, int8 bytes) front of the trials
trained to ``--max-budget`` tokens, read from its ``results.tsv``: the last rung of a rung search, every trial of a
flat one; replicates (the same trial again with another seed) and lower rungs are left out, since a model trained for
1/9 of the tokens is not comparable with one trained for all of them (pareto.json's front would mix them). The
reference point is fixed (bpb 8 = untrained, 1.05 x the largest int8 size in the space), both axes normalised to
[0, 1]. Each strategy reports the mean over its seeds with a 95 % Student-t confidence interval (mean +- t(0.975,
n-1) * s / sqrt(n)), the tokens it trained and, against ``random`` on the same seeds, how many seeds it won. The
compared figure is hypervolume per token, so the machine's load does not enter it; wall seconds are shown for scale.

    python benchmarks/search_quality.py [--seeds 5] [--seed-start 0] [--token-budget 400ktok] [--max-budget 27ktok]
    python benchmarks/search_quality.py --trials 16 --strategies nsga2,evolution,random   # the old equal-trials form

``--continue NAME`` finishes a run that ``--time-limit-min`` (or a kill) cut short: it takes the searches that
``results/NAME.json`` holds, refuses if any setting that changes a search differs, and runs only the (strategy, seed)
pairs of the planned seeds that are missing, so the planned seed list, fixed before any result was seen, is what the
table reports. Each rung strategy's paired difference from ``random`` on the same seeds (mean and 95 % t-interval)
is reported beside the unpaired intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, report, thread_env
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
        flags += ["--rungs", args.rungs, "--max-budget", args.max_budget, "--eta", str(args.eta)]
        if base == "evolution" and args.inherit:
            flags += ["--inherit"]
        flags += shlex.split(args.rung_flags)
    else:
        flags += ["--stage1", args.max_budget, "--stage2", "none"]
    return flags


def full_budget_points(results_tsv: Path, last_stage: int) -> list[tuple[float, float]]:
    """(val bpb, int8 bytes) of every trial trained to the full budget: the ok rows of ``last_stage``, replicates
    left out (see the module docstring)."""
    points = []
    with open(results_tsv, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row["stage"]) != last_stage or row.get("replicate") not in (None, "", "0") or row["status"] != "ok":
                continue
            points.append((float(row["val_bpb"]), float(row["size_bytes_int8"])))
    return points


def run_search(strategy: str, seed: int, args: argparse.Namespace) -> tuple[dict, list[tuple[float, float]], float]:
    """One search in a fresh process; its pareto.json, its full-budget (bpb, int8 bytes) points and wall seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s"
        cmd = [sys.executable, "-m", "nas", "nas", "search", *search_args(strategy, seed, out, args)]
        t0 = time.perf_counter()
        # the driver re-measures its front's latency: one thread, or on a loaded machine two spin against each other
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=thread_env(1))
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{strategy} seed {seed} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        last_stage = len(args.rungs.split(",")) if strategy.startswith("rungs-") else 1
        return json.loads((out / "pareto.json").read_text()), full_budget_points(out / "results.tsv", last_stage), secs


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % Student-t interval)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.inf
    return mean, float(student_t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


# the settings that change what a search does: a continued run must match the one it continues on all of them
SEARCH_SETTINGS = (
    "token_budget", "trials", "max_budget", "rungs", "eta", "inherit", "rung_flags", "strategies", "space", "corpus",
    "workers",
)  # fmt: skip
SeedTable = dict[str, dict[int, Any]]  # strategy -> seed -> value


def load_finished(name: str, args: argparse.Namespace) -> dict[str, SeedTable]:
    """The searches an earlier run of the same settings finished (``--continue``), by table name."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--continue {name}: no {path}")
    old = json.loads(path.read_text())
    differ = [k for k in SEARCH_SETTINGS if old["args"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--continue {name}: its searches ran with other settings ({', '.join(differ)})")
    tables = ("hypervolumes", "search_s", "tokens_trained", "full_trainings", "full_budget_points")
    return {t: {s: {int(k): v for k, v in by_seed.items()} for s, by_seed in old[t].items()} for t in tables}


def paired_difference(a: dict[int, float], b: dict[int, float], seeds: list[int]) -> dict[str, Any]:
    """Mean of a - b over the same seeds, its 95 % t-interval and how many seeds a won."""
    diffs = [a[s] - b[s] for s in seeds]
    mean, half = t_interval(diffs)
    return {"mean": mean, "ci95": [mean - half, mean + half], "wins": f"{sum(d > 0 for d in diffs)}/{len(diffs)}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed: tune on some seeds, report on fresh ones")
    ap.add_argument("--jobs", type=int, default=1, help="searches run at a time (each has --workers workers)")
    ap.add_argument("--token-budget", default="400ktok", help="tokens per search, all trials; '' for --trials")
    ap.add_argument("--trials", type=int, default=16, help="trials per search when --token-budget is ''")
    ap.add_argument("--max-budget", default="27ktok", help="tokens of a full training (the last rung)")
    ap.add_argument("--rungs", default="1/9,1")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--inherit", action=argparse.BooleanOptionalAction, default=False, help="rungs-evolution")
    ap.add_argument("--rung-flags", default="", help="more `nas search` flags for the rung strategies")
    ap.add_argument("--name", default="search_quality", help="results/<name>.json")
    ap.add_argument(
        "--time-limit-min",
        type=float,
        default=0.0,
        help="start no search after this many minutes; the table keeps the seeds every strategy finished (0: none)",
    )
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--continue", dest="continue_from", default="", help="results/<name>.json to finish (see above)")
    args = ap.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}: choose from {', '.join(STRATEGIES)}")
    ref_bytes = largest_int8_bytes(args.space) * 1.05
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    hvs: dict[str, dict[int, float]] = {s: {} for s in strategies}
    secs: dict[str, dict[int, float]] = {s: {} for s in strategies}
    tokens: dict[str, dict[int, int]] = {s: {} for s in strategies}
    n_full: dict[str, dict[int, int]] = {s: {} for s in strategies}
    points: dict[str, dict[int, list[tuple[float, float]]]] = {s: {} for s in strategies}  # (bpb, int8 bytes)
    if args.continue_from:
        done = load_finished(args.continue_from, args)
        for table, into in (
            ("hypervolumes", hvs),
            ("search_s", secs),
            ("tokens_trained", tokens),
            ("full_trainings", n_full),
            ("full_budget_points", points),
        ):
            for strategy in strategies:
                into[strategy].update({k: v for k, v in done[table].get(strategy, {}).items() if k in seeds})
    work = [
        (strategy, seed)
        for i, seed in enumerate(seeds)
        for strategy in strategies[i % len(strategies) :] + strategies[: i % len(strategies)]  # rotated per seed
        if seed not in hvs[strategy]
    ]

    started = time.monotonic()
    load_at_start = os.getloadavg()[0]

    def one(job: tuple[str, int]) -> None:
        strategy, seed = job
        if args.time_limit_min and time.monotonic() - started > args.time_limit_min * 60:
            return  # past --time-limit-min: start no more searches (the table keeps the seeds every strategy finished)
        summary, full, wall = run_search(strategy, seed, args)
        pts = [(bpb / 8.0, size / ref_bytes) for bpb, size in full]
        hvs[strategy][seed] = hypervolume(pts, (1.0, 1.0))
        secs[strategy][seed] = wall
        tokens[strategy][seed] = int(summary.get("tokens_trained", 0))
        n_full[strategy][seed] = len(full)
        points[strategy][seed] = full
        print(
            f"{strategy} seed {seed}: hv={hvs[strategy][seed]:.4f} full-budget={len(full)} "
            f"tokens={tokens[strategy][seed]:,} in {wall:.0f}s",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, work))
    planned = seeds
    seeds = [seed for seed in seeds if all(seed in hvs[s] for s in strategies)]  # finished by every strategy
    if not seeds:
        raise SystemExit("no seed was finished by every strategy within --time-limit-min")
    rows = []
    for strategy in strategies:
        values = [hvs[strategy][seed] for seed in seeds]
        mean, half = t_interval(values)
        row = {
            "strategy": strategy,
            "seeds": len(values),
            "hv_mean": mean,
            "hv_ci95_low": mean - half,
            "hv_ci95_high": mean + half,
            "hv_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "tokens_mean": statistics.fmean(tokens[strategy][seed] for seed in seeds),
            "full_trainings_mean": statistics.fmean(n_full[strategy][seed] for seed in seeds),
            "search_s_median": statistics.median(secs[strategy][seed] for seed in seeds),
        }
        if "random" in hvs and strategy != "random":
            row["wins_vs_random"] = f"{sum(hvs[strategy][s] > hvs['random'][s] for s in seeds)}/{len(seeds)}"
        rows.append(row)
    paired = {
        f"paired_difference_{strategy.replace('-', '_')}_minus_random": paired_difference(
            hvs[strategy], hvs["random"], seeds
        )
        for strategy in strategies
        if strategy.startswith("rungs-") and "random" in hvs
    }
    for name, diff in paired.items():
        print(f"{name}: {diff['mean']:+.4f} [{diff['ci95'][0]:+.4f}, {diff['ci95'][1]:+.4f}], wins {diff['wins']}")
    stop = f"{args.token_budget} per search" if args.token_budget else f"{args.trials} trials"
    report(
        args.name,
        f"hypervolume of full trainings (bpb/8, int8 bytes) at {stop}, {args.space} space, full training "
        f"{args.max_budget}, rungs {args.rungs} {args.rung_flags}, mean and 95% t-interval, "
        f"seeds {seeds[0]}-{seeds[-1]}",
        rows,
        {
            "seeds": seeds,
            "seeds_planned": planned,
            "hypervolumes": hvs,
            "tokens_trained": tokens,
            "full_trainings": n_full,
            "full_budget_points": points,
            "search_s": secs,
            "reference_bytes": ref_bytes,
            "args": vars(args),
            "command": "python " + shlex.join(sys.argv),
            "load_1min_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
            **paired,
        },
    )


if __name__ == "__main__":
    main()
