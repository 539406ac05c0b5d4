"""Hypervolume reached by NSGA-II, aging evolution and random search at the same trial budget.

Each strategy runs ``--seeds`` searches of ``--trials`` stage-1 trainings on the tiny space at a cheap
token-budget fidelity (screening off, no stage 2, so only the strategy differs). The hypervolume of each
search's (val bpb, int8 bytes) front is taken against a fixed reference point (bpb 8 = untrained, and the
largest int8 size in the space) after normalising both axes to [0, 1].

    python benchmarks/search_quality.py [--trials 16] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _common import report

from nas.counting import size_bytes
from nas.pareto import hypervolume
from nas.search import Search, SearchConfig
from nas.space import get_space


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", default="20ktok")
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    ref_bytes = largest_int8_bytes(args.space) * 1.05
    rows, raw = [], {}
    for strategy in ("nsga2", "evolution", "random"):
        hvs, secs = [], []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SearchConfig(
                    out=tmp,
                    space=args.space,
                    strategy=strategy,
                    trials=args.trials,
                    stage1_budget=args.budget,
                    stage2_budget="none",
                    screen=False,
                    population=6,
                    tournament=3,
                    seed=seed,
                    workers=args.workers,
                    eval_bytes=65_536,
                    batch_size=8,
                    export_hf=False,
                )
                t0 = time.perf_counter()
                summary = Search(cfg, live=False).run()
                secs.append(time.perf_counter() - t0)
            pts = [(m["objectives"]["bpb"] / 8.0, m["objectives"]["bytes_int8"] / ref_bytes) for m in summary["front"]]
            hvs.append(hypervolume(pts, (1.0, 1.0)))
            print(f"{strategy} seed {seed}: hv={hvs[-1]:.4f} front={len(pts)} in {secs[-1]:.0f}s", flush=True)
        raw[strategy] = hvs
        rows.append(
            {
                "strategy": strategy,
                "seeds": args.seeds,
                "trials": args.trials,
                "hv_mean": statistics.fmean(hvs),
                "hv_std": statistics.stdev(hvs) if len(hvs) > 1 else 0.0,
                "hv_min": min(hvs),
                "hv_max": max(hvs),
                "search_s_mean": statistics.fmean(secs),
            }
        )
    report(
        "search_quality",
        f"hypervolume (bpb/8, int8 bytes), {args.space} space, {args.trials} trials at {args.budget}",
        rows,
        {"hypervolumes": raw, "reference_bytes": ref_bytes},
    )


if __name__ == "__main__":
    main()
