"""Per-token decode latency of every deployment runtime (kernels/runtimes.py), each in a fresh process, set
against the memory-bandwidth floor, with the runtime our rule would ship marked.

For a ~10M and a ~50M-parameter Llama-shaped model: PyTorch fp32 / int8, ONNX Runtime fp32 / int8 and
CTranslate2 fp32 / int8 (CTranslate2's own conversion of our Hugging Face export: the peer a user would pick
instead), batch 1, a 32-token prompt and 128 new tokens, at 1 and 2 threads. Each measurement is its own process
(nothing warm carries over from another runtime), the runtime order is reversed every other round, and each row is
the median over rounds of the per-process p50 ms/token, with the spread (max - min over rounds, as % of the
median). ``--load`` runs the whole thing a second time with a training job beside it, for the "busy machine"
columns.

- ``x_floor``: the median as a multiple of the bandwidth floor (``kernels/bandwidth.py``: weight bytes one token
  reads in the runtime's format, fp32 or int8, over this machine's copy bandwidth at that thread count, measured
  once before the sweeps on the idle machine; ``busy_x_floor`` divides the busy median by the same floor).
- ``chosen``: the runtime :func:`kernels.runtimes.choose_runtime` picks at that thread count from these medians
  and each runtime's check-window bpb (computed once per shape, untimed, on a stdlib source file as bytes).
- ``x_ct2_int8``: the median over CTranslate2 int8's.

The weights are random but fixed (seed 0): decode time does not depend on them, so the figures are timing only,
not quality, and the bpb check only rules out a runtime that computes something else.

    python benchmarks/runtime_latency.py [--rounds 3] [--threads 1,2] [--shapes ~10M,~50M] [--load]
    python benchmarks/runtime_latency.py --rounds 1 --shapes tiny --decode 32      # a smoke run
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import report, training_load
from compression import SHAPES
from safetensors.torch import load_model, save_model

from harness.tokenizer import ByteTokenizer
from kernels.bandwidth import Bandwidth, measure_bandwidth, weight_bytes_per_token
from kernels.quant import save_int8
from kernels.runtimes import RUNTIMES, RuntimeFigures, RuntimeSources, choose_runtime, load, measure, prepare
from nas.hf import export_hf
from nas.model import build_model
from nas.space import ArchConfig

REPO = Path(__file__).resolve().parent.parent
ALL_SHAPES = {
    **SHAPES,
    "tiny": ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128, context_length=256),
}
Key = tuple[str, str, int]  # (shape, runtime, threads)


def _env(threads: int) -> dict[str, str]:
    """The measured process's environment: its thread pools capped at ``threads`` (OpenMP, MKL, tokenizers)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    return env


def prepare_shape(arch: ArchConfig, folder: Path) -> list[RuntimeFigures]:
    """The model (random, seed 0) with everything each runtime loads: weights, INT8 weights, ONNX graphs, hf/ and
    the CTranslate2 conversions; done once, in this process, before any timing. Returns each runtime's check-window
    bpb (untimed), which :func:`choose_runtime` needs besides the medians."""
    model = build_model(arch, seed=0).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    (folder / "arch.json").write_text(arch.to_json())
    save_int8(model, folder)
    src = RuntimeSources(model=model, out=folder, int8_dir=folder, hf_dir=export_hf(model, folder / "hf"))
    tok = ByteTokenizer()
    window = np.asarray(tok.encode(inspect.getsource(statistics))[: arch.context_length], dtype=np.int64)
    figures = measure(RUNTIMES, src, window, tok.token_bytes(), threads=1, timed=False)
    for f in figures:
        if f.skipped:
            raise SystemExit(f"{f.name}: {f.skipped}")
    return figures


def measure_one(folder: Path, name: str, threads: int, prompt: int, decode: int, repeats: int) -> dict[str, float]:
    """Child side: load one runtime and time it (this process times nothing else)."""
    import torch

    torch.set_num_threads(threads)
    model = build_model(ArchConfig.model_validate_json((folder / "arch.json").read_text()))
    load_model(model, str(folder / "model.safetensors"))
    src = RuntimeSources(model=model.eval(), out=folder, int8_dir=folder, hf_dir=folder / "hf")
    where = prepare(name, src)  # finds what prepare_shape wrote
    assert not isinstance(where, str), where
    lat = load(name, where, src, threads).decode_ms(prompt, decode, repeats)
    return {"ms_p50": lat.ms_p50, "ms_p90": lat.ms_p90}


def spawn(folder: Path, name: str, threads: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--one", name, "--dir", str(folder), "--threads", str(threads)]
    cmd += ["--prompt", str(args.prompt), "--decode", str(args.decode), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} at {threads} thread(s) failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["ms_p50"])


def sweep(folders: dict[str, Path], threads: list[int], args: argparse.Namespace) -> dict[Key, list[float]]:
    """(shape, runtime, threads) -> the p50 of each round; the runtime order flips every other round."""
    times: dict[Key, list[float]] = {}
    for r in range(args.rounds):
        order = list(RUNTIMES) if r % 2 == 0 else list(reversed(RUNTIMES))
        for shape, folder in folders.items():
            for n in threads:
                for name in order:
                    ms = spawn(folder, name, n, args)
                    times.setdefault((shape, name, n), []).append(ms)
                    print(f"round {r + 1}/{args.rounds} {shape} {name} {n} thread(s): {ms:.3f} ms/token", flush=True)
    return times


def _summary(values: list[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, 100 * (max(values) - min(values)) / med if med else 0.0


def floors_ms(shapes: list[str], bandwidth: dict[int, Bandwidth]) -> dict[Key, float]:
    """(shape, runtime, threads) -> the bandwidth floor in ms/token: the weight bytes one token reads in the
    runtime's format (``*_int8`` int8, the others fp32) over the copy bandwidth at that thread count."""
    out = {}
    for shape in shapes:
        model = build_model(ALL_SHAPES[shape], seed=0)
        nbytes = {fmt: weight_bytes_per_token(model, fmt) for fmt in ("fp32", "int8")}
        for name in RUNTIMES:
            fmt = "int8" if name.endswith("_int8") else "fp32"
            for n, bw in bandwidth.items():
                out[(shape, name, n)] = bw.floor_ms(nbytes[fmt])
    return out


def chosen(checks: dict[str, list[RuntimeFigures]], quiet: dict[Key, list[float]], threads: list[int]) -> set[Key]:
    """The runtime the shipping rule picks for each shape and thread count, from the quiet medians."""
    picks = set()
    for shape, figures in checks.items():
        for n in threads:
            timed = [
                f.model_copy(update={"threads": n, "ms_p50": statistics.median(quiet[(shape, f.name, n)])})
                for f in figures
            ]
            pick = choose_runtime(timed).runtime
            if pick is not None:
                picks.add((shape, pick, n))
    return picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="~10M,~50M", help=f"comma list of {', '.join(ALL_SHAPES)}")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats inside each process (after one warm-up)")
    ap.add_argument("--load", action="store_true", help="also measure with a training job running beside")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        threads = int(args.threads)
        print(json.dumps(measure_one(args.dir, args.one, threads, args.prompt, args.decode, args.repeats)))
        return
    threads = [int(t) for t in args.threads.split(",")]
    shapes = [s.strip() for s in args.shapes.split(",")]
    print(f"measuring copy bandwidth at {', '.join(map(str, threads))} thread(s)", flush=True)
    bandwidth = {n: measure_bandwidth(n) for n in threads}
    floors = floors_ms(shapes, bandwidth)
    with tempfile.TemporaryDirectory(prefix="runtime-latency-") as tmp:
        folders, checks = {}, {}
        for shape in shapes:
            folders[shape] = Path(tmp) / shape.strip("~")
            print(f"preparing {shape}: weights, int8, ONNX graphs, hf/, CTranslate2 conversions", flush=True)
            checks[shape] = prepare_shape(ALL_SHAPES[shape], folders[shape])
        quiet = sweep(folders, threads, args)
        busy: dict[Key, list[float]] = {}
        if args.load:
            with training_load(Path(tmp) / "load"):
                busy = sweep(folders, threads, args)
    picks = chosen(checks, quiet, threads)
    rows = []
    for key, values in quiet.items():
        shape, name, n = key
        med, spread = _summary(values)
        ct2 = statistics.median(quiet[(shape, "ct2_int8", n)])
        row = {
            "shape": shape,
            "runtime": name,
            "threads": n,
            "ms_p50": round(med, 4),
            "spread_%": round(spread, 1),
            "x_floor": round(med / floors[key], 2),
            "x_ct2_int8": round(med / ct2, 3),
            "chosen": "yes" if key in picks else "",
        }
        if busy:
            b_med, b_spread = _summary(busy[key])
            row.update(
                {
                    "busy_ms_p50": round(b_med, 4),
                    "busy_spread_%": round(b_spread, 1),
                    "busy_x_floor": round(b_med / floors[key], 2),
                }
            )
        rows.append(row)
    rows.sort(key=lambda r: (r["shape"], r["threads"], r["ms_p50"]))
    report(
        "runtime_latency",
        f"decode ms/token by runtime (batch 1, prompt {args.prompt} + {args.decode} new, random-but-fixed weights: "
        f"timing only, median of {args.rounds} fresh-process rounds)",
        rows,
        {
            "prompt": args.prompt,
            "decode": args.decode,
            "rounds": args.rounds,
            "weights": "random, seed 0 (timing only)",
            "load": args.load,
            "params": {s: sum(p.numel() for p in build_model(ALL_SHAPES[s]).parameters()) for s in shapes},
            "bandwidth_gb_per_s": {n: bw.gb_per_s_best for n, bw in bandwidth.items()},
            "floor_ms": {f"{s} {r} {n}": round(v, 4) for (s, r, n), v in floors.items()},
        },
        wide=True,
    )


if __name__ == "__main__":
    main()
