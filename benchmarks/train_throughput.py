"""Our trainer against a minimal plain PyTorch loop on the same model, data and batch, in one process.

Both loops are timed the same way (every optimizer step, first included); rounds alternate so that
machine noise hits both. Target on CPU: ours >= 0.95 x the plain loop. On CUDA it also reports
model-FLOPs utilisation (6 x params x tokens/s + attention, against the device's bf16 peak given by
--peak-tflops) for a ~20M-parameter model in bf16.

    python benchmarks/train_throughput.py                 # CPU, the default 1M-parameter model
    python benchmarks/train_throughput.py --device cuda --preset 20m --peak-tflops 989
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import report

from harness.data import prepare_corpus
from nas.counting import count_params, flops_per_token
from nas.model import build_model
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer, prepare_run_dir

PRESETS = {
    "1m": ArchConfig(),  # 4 x 128, ~1.1M parameters
    "20m": ArchConfig(n_layers=8, d_model=448, n_heads=7, n_kv_heads=7, d_ff=1216, context_length=512),
}


def plain_loop(arch: ArchConfig, tokens: np.ndarray, steps: int, batch: int, device: torch.device, bf16: bool) -> float:
    """nanoGPT-style: get_batch, forward, cross-entropy, backward, AdamW step. Returns tokens/s."""
    torch.manual_seed(0)
    model = build_model(arch, seed=0).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )
    data = torch.from_numpy(np.asarray(tokens[:4_000_000], dtype=np.int64))
    T = arch.context_length
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        ix = torch.randint(len(data) - T - 1, (batch,))
        x = torch.stack([data[i : i + T] for i in ix]).to(device)
        y = torch.stack([data[i + 1 : i + 1 + T] for i in ix]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch * T / (time.perf_counter() - t0)


def ours(arch: ArchConfig, corpus, steps: int, batch: int, device: torch.device, compile: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        prepare_run_dir(out)
        cfg = TrainConfig(
            budget_tokens=steps * batch * arch.context_length,
            batch_size=batch,
            lr=1e-3,
            device=str(device),
            compile=compile,
            eval_bytes=4096,
            measure_latency=False,
            checkpoint_every_s=1e9,
            log_every=10,
        )
        outcome = Trainer(arch, corpus, cfg, out, log_to_console=False).run()
        return float(outcome.metrics["tokens_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=list(PRESETS), default="1m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device bf16 dense peak, for MFU")
    args = ap.parse_args()
    device = torch.device(args.device)
    arch = PRESETS[args.preset]
    corpus = prepare_corpus(tokenizer="byte")
    bf16 = device.type == "cuda"
    plain_tps, our_tps = [], []
    plain_loop(arch, corpus["train"], 3, args.batch, device, bf16)  # warm-up (allocator, kernels)
    for _ in range(args.rounds):
        plain_tps.append(plain_loop(arch, corpus["train"], args.steps, args.batch, device, bf16))
        our_tps.append(ours(arch, corpus, args.steps, args.batch, device, args.compile))
    p, o = statistics.median(plain_tps), statistics.median(our_tps)
    flops = 3 * flops_per_token(arch, arch.context_length // 2)  # forward + backward
    row = {
        "device": str(device),
        "params": count_params(arch).total,
        "batch": args.batch,
        "context": arch.context_length,
        "steps": args.steps,
        "plain_tok_s": p,
        "ours_tok_s": o,
        "ratio": o / p,
        "plain_rounds": ", ".join(f"{v:.0f}" for v in plain_tps),
        "ours_rounds": ", ".join(f"{v:.0f}" for v in our_tps),
        "achieved_tflops": o * flops / 1e12,
    }
    if args.peak_tflops:
        row["mfu"] = o * flops / (args.peak_tflops * 1e12)
    report(
        f"train_throughput_{args.preset}_{device.type}",
        "trainer vs plain PyTorch loop (tokens/s, median of rounds)",
        [row],
    )


if __name__ == "__main__":
    main()
