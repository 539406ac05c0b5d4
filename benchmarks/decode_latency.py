"""Per-token decode latency by mode (eager cached forward, static-shape step, torch.compile of it, and CUDA
graphs on a GPU) for ~10M and ~50M-parameter shapes, batch 1, greedy, after a 32-token prompt.

On CPU it also compares thread counts (1 and all cores). The greedy continuations of all modes are compared
(the same tokens means the modes compute the same thing). Weights are random: latency does not depend on them.
Each CPU row also gives its time as a multiple of the memory-bandwidth floor (fp32 weight bytes per token over
this machine's copy bandwidth at that thread count, ``kernels/bandwidth.py``).

    python benchmarks/decode_latency.py [--device cuda] [--modes eager,static,compile] [--decode 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import report
from compression import SHAPES

from kernels.bandwidth import measure_bandwidth, weight_bytes_per_token
from kernels.latency import MODES, measure_decode
from nas.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)} (default: all the device can run)")
    ap.add_argument("--threads", default=None, help="CPU thread counts to compare, e.g. 1,2 (default: 1 and all cores)")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    modes = args.modes.split(",") if args.modes else [m for m in MODES if m != "cuda-graph" or device.type == "cuda"]
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    rows = []
    bandwidth = {n: measure_bandwidth(n) for n in threads} if device.type == "cpu" else {}
    for label, arch in SHAPES.items():
        model = build_model(arch, seed=0).to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        for n in threads if device.type == "cpu" else [None]:
            reference = None
            for mode in modes:
                r = measure_decode(
                    model,
                    mode,
                    prompt_tokens=args.prompt,
                    decode_tokens=args.decode,
                    warmup=2,
                    repeats=args.repeats,
                    threads=n,
                )
                reference = reference or r.tokens
                rows.append(
                    {
                        "shape": label,
                        "params_M": round(params / 1e6, 1),
                        "threads": r.threads if device.type == "cpu" else "-",
                        "mode": mode,
                        "prefill_ms_p50": round(r.prefill_ms_p50, 3),
                        "decode_ms_p50": round(r.decode_ms_p50, 3),
                        "decode_ms_p90": round(r.decode_ms_p90, 3),
                        "same_tokens_as_eager": r.tokens == reference,
                    }
                )
                if n in bandwidth:
                    floor = bandwidth[n].floor_ms(weight_bytes_per_token(model, "fp32"))
                    rows[-1]["x_floor"] = round(r.decode_ms_p50 / floor, 2)
    name = f"decode_latency_{device.type}"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    report(name, f"decode latency per token, batch 1 ({gpu or 'CPU'})", rows, {"device": gpu or "cpu"})


if __name__ == "__main__":
    main()
