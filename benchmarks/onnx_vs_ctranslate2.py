"""Our deployed decode (ONNX Runtime int8 decode step) against CTranslate2's own int8 conversion of the same model,
batch 1, greedy, 32-token prompt then 128 tokens, for the ~10M and ~50M Llama-shaped models, with each figure
set against the memory-bandwidth floor (int8 weight bytes per token / this machine's copy bandwidth).

CTranslate2 is the peer a user would pick instead: it converts the model's Hugging Face export
(``TransformersConverter(...).convert(out, quantization="int8")``). Both runtimes run in fresh processes, in
alternating order, for several rounds; the table gives the median of the per-round medians and their spread.
Weights are random but fixed (seed 0): decode time does not depend on their values. CTranslate2's converter
reads the byte tokenizer that every hf/ folder carries.

    python benchmarks/onnx_vs_ctranslate2.py [--rounds 3] [--threads 1] [--shapes ~10M,~50M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report
from compression import SHAPES

HERE = Path(__file__).resolve().parent
PROMPT, NEW = 32, 128


def _onnx_child(folder: Path, shape: str, threads: int) -> float:
    from kernels.onnx_export import ONNX_INT8_FILE, OnnxDecoder
    from nas.model import build_model

    model = build_model(SHAPES[shape], seed=0).eval()
    dec = OnnxDecoder(folder / ONNX_INT8_FILE, model, threads)
    return dec.decode_latency_ms(prompt_tokens=PROMPT, decode_tokens=NEW, repeats=2)["latency_ms_p50"]


def _ct2_child(folder: Path, threads: int) -> float:
    import ctranslate2

    gen = ctranslate2.Generator(
        str(folder / "ct2"), device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1
    )
    prompt = [f"t{1 + i % 200}" for i in range(PROMPT)]
    steps: list[float] = []
    for repeat in range(3):  # the first warms up
        times = []
        t0 = time.perf_counter()
        for _ in gen.generate_tokens(prompt, max_length=NEW + 1, sampling_topk=1, end_token=[]):
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            t0 = t1
        if repeat:
            steps += times[1:]  # the first token carries the prefill
    return statistics.median(steps)


def _export(shape: str, folder: Path) -> None:
    import ctranslate2

    from kernels.onnx_export import export_decode_step, quantize_onnx_int8
    from nas.hf import export_hf
    from nas.model import build_model

    arch = SHAPES[shape]
    model = build_model(arch, seed=0).eval()
    quantize_onnx_int8(export_decode_step(model, folder))
    export_hf(model, folder / "hf")  # the byte tokenizer (vocab 256), which hf/ now carries for CTranslate2
    ctranslate2.converters.TransformersConverter(str(folder / "hf")).convert(str(folder / "ct2"), quantization="int8")


def _child(args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": args[-1]}
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=HERE)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1", help="comma list of thread counts")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        runtime, folder, shape, threads = args.child
        ms = (
            _onnx_child(Path(folder), shape, int(threads))
            if runtime == "onnx"
            else _ct2_child(Path(folder), int(threads))
        )
        print(json.dumps(ms))
        return

    from kernels.bandwidth import measure_bandwidth, weight_bytes_per_token
    from nas.model import build_model

    counts = [int(t) for t in args.threads.split(",")]
    bandwidth = {n: measure_bandwidth(n) for n in counts}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            folder = Path(tmp) / shape.strip("~")
            _export(shape, folder)
            model = build_model(SHAPES[shape], seed=0)
            params = sum(p.numel() for p in model.parameters())
            nbytes = weight_bytes_per_token(model, "int8")
            for n in counts:
                samples: dict[str, list[float]] = {"onnxruntime int8": [], "ctranslate2 int8": []}
                for r in range(args.rounds):
                    order = ["onnx", "ct2"] if r % 2 == 0 else ["ct2", "onnx"]
                    for runtime in order:
                        name = "onnxruntime int8" if runtime == "onnx" else "ctranslate2 int8"
                        samples[name].append(_child([runtime, str(folder), shape, str(n)]))
                floor = bandwidth[n].floor_ms(nbytes)
                for name, v in samples.items():
                    med = statistics.median(v)
                    rows.append(
                        {
                            "shape": shape,
                            "params_M": round(params / 1e6, 1),
                            "runtime": name,
                            "threads": n,
                            "ms_per_token": med,
                            "spread_ms": max(v) - min(v),
                            "floor_ms": floor,
                            "x_floor": med / floor,
                        }
                    )
    extra = {
        "bandwidth_gb_per_s": {n: b.gb_per_s_best for n, b in bandwidth.items()},
        "prompt_tokens": PROMPT,
        "new_tokens": NEW,
        "rounds": args.rounds,
    }
    report("onnx_vs_ctranslate2", "decode ms/token, batch 1: ONNX Runtime int8 vs CTranslate2 int8", rows, extra)


if __name__ == "__main__":
    main()
