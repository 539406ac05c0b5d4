"""Stage-0 screening throughput: candidates screened per CPU-hour, with and without a latency limit.

The search's stage 0 (``nas.search_screening.Screener``) checks the size limits from the config, builds and times
only the candidates within them when a latency limit is set, and ranks the rest by a zero-cost proxy. This
benchmark runs the real screener on the default search space for a fixed number of candidates in a fresh process
per measurement (one torch thread, the sampler seeded), alternating the two settings round by round, and reports
the median and spread of candidates per CPU-hour (process CPU time) and per wall hour, plus how many candidates
were timed for latency: with the size check first, only candidates within the size limit are.

    python benchmarks/screening_rate.py [--rounds 3] [--candidates 64] [--max-mb 2] [--max-latency-ms 20]
    python benchmarks/screening_rate.py --one size|size+latency ...   # one measurement, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("size", "size+latency")


def measure_one(setting: str, candidates: int, max_mb: float, max_latency_ms: float, seed: int) -> dict:
    """Screen ``candidates`` candidates in this process; CPU and wall seconds, and what happened to them."""
    import torch

    torch.set_num_threads(1)
    import nas.search_screening as screening
    from harness.data import CorpusSpec
    from nas.objectives import SearchLimits, parse_objectives
    from nas.search_config import SearchConfig
    from nas.search_study import SearchStudies
    from nas.space import get_space
    from nas.trial import cached_corpus

    timed: list[int] = []
    real = screening.measure_latency

    def counting_latency(model, **kw):  # counts the costly check; the measurement itself is the real one
        timed.append(1)
        return real(model, **kw)

    screening.measure_latency = counting_latency
    limits = SearchLimits(max_mb=max_mb, max_latency_ms=max_latency_ms if setting == "size+latency" else None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(
            out=tmp,
            space="default",
            strategy="random",
            trials=candidates,
            screen_batch=16,
            seed=seed,
            limits=limits,
            corpus=CorpusSpec(),
        )
        objectives = parse_objectives(cfg.objectives)
        studies = SearchStudies(cfg, Path(tmp), len(objectives), resume=False)
        corpus = cached_corpus(cfg.corpus, cfg.tokenizer)
        screener = screening.Screener(cfg, get_space("default"), objectives, studies, corpus, note=lambda line: None)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while len(studies.trials(1)) < candidates:
            screener.screen_batch()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        trials = studies.trials(1)
        rejected = sum(1 for t in trials if t.user_attrs.get("status") == "rejected")
    return {
        "setting": setting,
        "candidates": len(trials),
        "rejected": rejected,
        "timed_for_latency": len(timed),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def _fresh(setting: str, args: argparse.Namespace, seed: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        setting,
        "--candidates",
        str(args.candidates),
        "--max-mb",
        str(args.max_mb),
        "--max-latency-ms",
        str(args.max_latency_ms),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--max-mb", type=float, default=2.0)
    p.add_argument("--max-latency-ms", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", choices=SETTINGS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.candidates, args.max_mb, args.max_latency_ms, args.seed)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import report

    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
        for setting in order:  # the same seed in a round: both settings see the same candidates
            runs[setting].append(_fresh(setting, args, args.seed + r))
            print(f"round {r + 1}/{args.rounds} {setting}: {runs[setting][-1]}", file=sys.stderr)
    rows = []
    for setting, ms in runs.items():
        per_cpu_h = [3600 * m["candidates"] / m["cpu_s"] for m in ms]
        per_wall_h = [3600 * m["candidates"] / m["wall_s"] for m in ms]
        rows.append(
            {
                "setting": setting,
                "candidates per CPU-hour (median)": round(statistics.median(per_cpu_h)),
                "min-max": f"{min(per_cpu_h):,.0f}-{max(per_cpu_h):,.0f}",
                "per wall-hour (median)": round(statistics.median(per_wall_h)),
                "rejected on size": f"{sum(m['rejected'] for m in ms)}/{sum(m['candidates'] for m in ms)}",
                "timed for latency": f"{sum(m['timed_for_latency'] for m in ms)}/{sum(m['candidates'] for m in ms)}",
            }
        )
    report(
        "screening_rate",
        f"Stage-0 screening, default space, max {args.max_mb} MB int8, latency limit {args.max_latency_ms} ms, "
        f"1 thread, {args.rounds} rounds x {args.candidates} candidates",
        rows,
        {"runs": runs, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
