"""``autonas serve`` under concurrent streaming clients: batched decoding against one request at a time.

For each model (the default architecture, 1.1 M parameters, and a ~10.7 M one; random but fixed weights: speed
does not depend on what the weights learned) and each client count (1, 4, 16), the server runs in a fresh
process twice, batched (``--max-batch 16``) and one at a time (``--max-batch 1``), in alternating order across
rounds. Every client streams ``/v1/completions`` (greedy, 64 new tokens) in a loop for the measuring window; the
benchmark records total generated tokens per second, time to first token (p50/p99) and the gap between tokens
(p50/p99), and reports the batched / one-at-a-time throughput ratio. Median over rounds.

    python benchmarks/serving.py [--rounds 2] [--clients 1,4,16] [--seconds 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODELS = {
    "default-1.1M": {},
    "10.7M": {"n_layers": 6, "d_model": 384, "n_heads": 6, "n_kv_heads": 6, "d_ff": 1024, "context_length": 512},
}
NEW_TOKENS = 64


def _make_models(root: Path) -> None:
    from safetensors.torch import save_model

    from nas.model import build_model
    from nas.space import ArchConfig

    for name, overrides in MODELS.items():
        arch = ArchConfig(**overrides)
        folder = root / name / "best"
        folder.mkdir(parents=True)
        save_model(build_model(arch, seed=0), str(folder / "model.safetensors"))
        (folder / "arch.json").write_text(arch.model_dump_json())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(runs: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    autonas = Path(sys.executable).with_name("autonas")
    proc = subprocess.Popen(
        [str(autonas), "serve", "--runs-dir", str(runs), "--port", str(port), "--max-batch", str(max_batch)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


async def _client(url: str, model: str, stop_at: float, out: dict[str, list[float]], i: int) -> None:
    body = {"model": model, "prompt": f"def f{i}(x):\n", "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(timeout=120) as h:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            last, first = t0, True
            async with h.stream("POST", f"{url}/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if not json.loads(line[6:])["choices"][0]["text"]:
                        continue
                    now = time.perf_counter()
                    out["ttft" if first else "gap"].append(now - (t0 if first else last))
                    out["tokens"].append(now)
                    first, last = False, now


async def _load(url: str, model: str, clients: int, seconds: float) -> dict[str, float]:
    out: dict[str, list[float]] = {"ttft": [], "gap": [], "tokens": []}
    await _client(url, model, time.perf_counter(), {"ttft": [], "gap": [], "tokens": []}, -1)  # load the model
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, model, start + seconds, out, i) for i in range(clients)))
    wall = time.perf_counter() - start

    def pct(values: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else float("nan")

    return {
        "tokens_per_s": len(out["tokens"]) / wall,
        "ttft_ms_p50": pct(out["ttft"], 50),
        "ttft_ms_p99": pct(out["ttft"], 99),
        "token_gap_ms_p50": pct(out["gap"], 50),
        "token_gap_ms_p99": pct(out["gap"], 99),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import report

    counts = [int(c) for c in args.clients.split(",")]
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        _make_models(runs)
        for r in range(args.rounds):
            modes = ("batched", "one-at-a-time") if r % 2 == 0 else ("one-at-a-time", "batched")
            for mode in modes:
                proc, url = _start_server(runs, 16 if mode == "batched" else 1, args.threads)
                try:
                    for model in MODELS:
                        for n in counts:
                            m = asyncio.run(_load(url, model, n, args.seconds))
                            results.setdefault((model, n, mode), []).append(m)
                            print(f"round {r + 1} {mode} {model} x{n}: {m['tokens_per_s']:.0f} tok/s", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    rows = []
    for model in MODELS:
        for n in counts:
            med = {
                mode: {
                    k: statistics.median(x[k] for x in results[(model, n, mode)]) for k in results[(model, n, mode)][0]
                }
                for mode in ("batched", "one-at-a-time")
            }
            b, o = med["batched"], med["one-at-a-time"]
            rows.append(
                {
                    "model": model,
                    "clients": n,
                    "batched tok/s": round(b["tokens_per_s"], 1),
                    "one-at-a-time tok/s": round(o["tokens_per_s"], 1),
                    "ratio": round(b["tokens_per_s"] / o["tokens_per_s"], 2),
                    "TTFT p50/p99 ms (batched)": f"{b['ttft_ms_p50']:.0f}/{b['ttft_ms_p99']:.0f}",
                    "TTFT p50/p99 ms (one)": f"{o['ttft_ms_p50']:.0f}/{o['ttft_ms_p99']:.0f}",
                    "token gap p50/p99 ms (batched)": f"{b['token_gap_ms_p50']:.1f}/{b['token_gap_ms_p99']:.1f}",
                    "token gap p50/p99 ms (one)": f"{o['token_gap_ms_p50']:.1f}/{o['token_gap_ms_p99']:.1f}",
                }
            )
    report(
        "serving",
        f"autonas serve, streaming clients, greedy {NEW_TOKENS} tokens, {args.threads} thread(s), "
        f"median of {args.rounds} rounds x {args.seconds:g} s",
        rows,
        {"raw": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in results.items()}, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
