"""Per-token decode latency of every deployment runtime (kernels/runtimes.py), each in a fresh process.

For a ~10M and a ~50M-parameter Llama-shaped model: PyTorch fp32 / int8, ONNX Runtime fp32 / int8 and
CTranslate2 fp32 / int8 (CTranslate2's own conversion of our Hugging Face export), batch 1, a 32-token prompt and
128 new tokens, at 1 and 2 threads. Each measurement is its own process (nothing warm carries over from another
runtime), the runtime order is reversed every other round, and each row is the median over rounds of the
per-process p50 ms/token, with the spread (max - min over rounds, as % of the median). The weights are random but
fixed (seed 0): decode time does not depend on them, so the figures are timing only, not quality. ``--load`` runs
the whole thing a second time with a training job beside it, for the "busy machine" columns.

    python benchmarks/runtime_latency.py [--rounds 3] [--threads 1,2] [--shapes ~10M,~50M] [--load]
    python benchmarks/runtime_latency.py --rounds 1 --shapes tiny --decode 32      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import report, training_load
from compression import SHAPES

from kernels.quant import save_int8
from kernels.runtimes import RUNTIMES, RuntimeSources, load, prepare
from nas.hf import export_hf
from nas.model import build_model
from nas.space import ArchConfig

REPO = Path(__file__).resolve().parent.parent
ALL_SHAPES = {
    **SHAPES,
    "tiny": ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128, context_length=256),
}


def _env(threads: int) -> dict[str, str]:
    """The measured process's environment: its thread pools capped at ``threads`` (OpenMP, MKL, tokenizers)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    return env


def prepare_shape(arch: ArchConfig, folder: Path) -> None:
    """The model (random, seed 0) with everything each runtime loads: weights, INT8 weights, ONNX graphs, hf/ and
    the CTranslate2 conversions; done once, in this process, before any timing."""
    from safetensors.torch import save_model

    model = build_model(arch, seed=0).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    (folder / "arch.json").write_text(arch.to_json())
    save_int8(model, folder)
    src = RuntimeSources(model=model, out=folder, int8_dir=folder, hf_dir=export_hf(model, folder / "hf"))
    for name in RUNTIMES:
        where = prepare(name, src)
        if isinstance(where, str):
            raise SystemExit(f"{name}: {where}")


def measure_one(folder: Path, name: str, threads: int, prompt: int, decode: int, repeats: int) -> dict[str, float]:
    """Child side: load one runtime and time it (this process times nothing else)."""
    import torch
    from safetensors.torch import load_model

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


def sweep(folders: dict[str, Path], threads: list[int], args: argparse.Namespace) -> dict[tuple, list[float]]:
    """(shape, runtime, threads) -> the p50 of each round; the runtime order flips every other round."""
    times: dict[tuple, list[float]] = {}
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
    with tempfile.TemporaryDirectory(prefix="runtime-latency-") as tmp:
        folders = {}
        for shape in shapes:
            folders[shape] = Path(tmp) / shape.strip("~")
            print(f"preparing {shape}: weights, int8, ONNX graphs, hf/, CTranslate2 conversions", flush=True)
            prepare_shape(ALL_SHAPES[shape], folders[shape])
        quiet = sweep(folders, threads, args)
        busy: dict[tuple, list[float]] = {}
        if args.load:
            with training_load(Path(tmp) / "load"):
                busy = sweep(folders, threads, args)
    rows = []
    for (shape, name, n), values in quiet.items():
        med, spread = _summary(values)
        ct2 = statistics.median(quiet[(shape, "ct2_int8", n)])
        arch = ALL_SHAPES[shape]
        row = {
            "shape": shape,
            "params": sum(p.numel() for p in build_model(arch).parameters()),
            "runtime": name,
            "threads": n,
            "ms_p50": round(med, 4),
            "spread_%": round(spread, 1),
            "x_ct2_int8": round(med / ct2, 3),
        }
        if busy:
            b_med, b_spread = _summary(busy[(shape, name, n)])
            row.update({"busy_ms_p50": round(b_med, 4), "busy_spread_%": round(b_spread, 1)})
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
        },
    )


if __name__ == "__main__":
    main()
