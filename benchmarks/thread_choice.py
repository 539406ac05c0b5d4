"""Which thread counts hold up on a busy machine: decode ms/token and training tokens/s at 1 and 2 threads,
each on an idle machine and beside a competing CPU job (a second training process, the way a search runs
workers side by side).

Every figure comes from a fresh process; within a round the thread counts run in alternating order; the table
gives the median over rounds and the spread (max - min). Decoding is the deployed path (the ~10M Llama-shaped
model's ONNX Runtime int8 decode step, 32-token prompt then 64 tokens); training is a plain AdamW loop over a
small model on random tokens (batch 8 x 128), which is what a search worker's cores do. Weights are random:
neither figure depends on them.

    python benchmarks/thread_choice.py [--rounds 3] [--threads 1,2]
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

HERE = Path(__file__).resolve().parent


def _decode_child(model_dir: str, threads: int) -> dict[str, float]:
    from compression import SHAPES

    from kernels.onnx_export import ONNX_INT8_FILE, OnnxDecoder
    from nas.model import build_model

    model = build_model(SHAPES["~10M"], seed=0).eval()
    dec = OnnxDecoder(Path(model_dir) / ONNX_INT8_FILE, model, threads)
    return {"value": dec.decode_latency_ms(prompt_tokens=32, decode_tokens=64, repeats=2)["latency_ms_p50"]}


def _train_child(threads: int, seconds: float) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from nas.model import build_model
    from nas.space import ArchConfig

    torch.set_num_threads(threads)
    arch = ArchConfig(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, d_ff=768, context_length=128)
    model = build_model(arch, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, arch.vocab_size, (8, 129), generator=g)
    tokens, steps, t0 = 0, 0, time.perf_counter()
    while True:
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps == 2:  # the first steps warm the allocator up: not timed
            tokens, t0 = 0, time.perf_counter()
        elif steps > 2:
            tokens += batch[:, 1:].numel()
        if steps > 2 and time.perf_counter() - t0 >= seconds:
            return {"value": tokens / (time.perf_counter() - t0)}


def _run_child(args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": args[-1]}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True, env=env, cwd=HERE
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["value"])


def _competitor() -> subprocess.Popen[bytes]:
    """A second training process at 1 thread that runs until it is stopped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "train", "1e9", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=HERE)


def _export(model_dir: Path) -> None:
    from compression import SHAPES

    from kernels.onnx_export import export_decode_step, quantize_onnx_int8
    from nas.model import build_model

    quantize_onnx_int8(export_decode_step(build_model(SHAPES["~10M"], seed=0).eval(), model_dir))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--train-seconds", type=float, default=4.0)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        res = _decode_child(rest[0], int(rest[1])) if kind == "decode" else _train_child(int(rest[1]), float(rest[0]))
        print(json.dumps(res))
        return
    counts = [int(t) for t in args.threads.split(",")]
    samples: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _export(Path(tmp))
        for load in ("idle", "beside a training job"):
            competitor = _competitor() if load != "idle" else None
            try:
                if competitor:
                    time.sleep(2)  # let it get past its start-up
                for r in range(args.rounds):
                    for n in counts if r % 2 == 0 else counts[::-1]:
                        samples.setdefault(("decode ms/token", load, n), []).append(_run_child(["decode", tmp, str(n)]))
                        samples.setdefault(("train tokens/s", load, n), []).append(
                            _run_child(["train", str(args.train_seconds), str(n)])
                        )
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
    rows = [
        {
            "measure": what,
            "load": load,
            "threads": n,
            "median": statistics.median(v),
            "spread": max(v) - min(v),
            "rounds": len(v),
        }
        for (what, load, n), v in samples.items()
    ]
    rows.sort(key=lambda r: (r["measure"], r["load"], r["threads"]))
    report("thread_choice", "thread counts: decode and training, idle and beside a training job", rows)


if __name__ == "__main__":
    main()
