"""``autonas serve`` under concurrent streaming clients: batched decoding against one request at a time, PyTorch
against ONNX Runtime int8.

For each model (the default architecture, 1.1 M parameters, and a ~10.7 M one; random but fixed weights: speed
does not depend on what the weights learned), each runtime (``--runtime torch``: PyTorch fp32 over the slot cache;
``--runtime onnx-int8``: the batched 8-bit ONNX graph), each thread count (1 and 2) and each client count (1, 4,
16), the server runs in a fresh process batched (``--max-batch 16``) and one at a time (``--max-batch 1``); the
order of the server configurations is reversed every other round. Every client streams ``/v1/completions``
(greedy, 64 new tokens) in a loop for the measuring window; the benchmark records total generated tokens per second,
time to first token (p50/p99), the time per token within a request ((last - first text) / (tokens - 1), p50/p99
over requests), and the server process's CPU time per generated
token (from ``/proc``): on a machine shared with other jobs tokens/s follows the CPU share the server happens to get,
while CPU ms per token is what the server itself costs, so it is the steadier figure. The table gives the median
over rounds (tok/s with its min-max spread), the batched / one-at-a-time ratio of each runtime (of tokens/s and of
CPU per token), and ONNX int8 / PyTorch when batched: all ratios from servers measured in the same run. The 1-minute
load average at each measurement is kept in the JSON.

    python benchmarks/serving.py [--rounds 2] [--clients 1,4,16] [--seconds 4] [--threads 1,2]
                                 [--runtimes torch,onnx-int8]
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
from typing import Any

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


def _start_server(runs: Path, max_batch: int, threads: int, runtime: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    autonas = Path(sys.executable).with_name("autonas")
    proc = subprocess.Popen(
        [
            *(str(autonas), "serve", "--runs-dir", str(runs), "--port", str(port)),
            *("--max-batch", str(max_batch), "--runtime", runtime),
        ],
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
    """Streams completions one after another until ``stop_at`` (the last one started runs to its end).

    A server-sent event may carry several tokens (those that reached the server's event loop together), so tokens
    are counted from the usage chunk (``stream_options.include_usage``) and the time per token of a request is
    (last text - first text) / (tokens - 1)."""
    body = {
        "model": model,
        "prompt": f"def f{i}(x):\n",
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(timeout=None) as h:  # a queued request may wait long on a loaded machine
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            async with h.stream("POST", f"{url}/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"][0]["text"]:
                        last = time.perf_counter()
                        first = first or last
            if first is None or last is None:
                continue
            out["ttft"].append(first - t0)
            out["tokens"].append(tokens)
            if tokens > 1:
                out["per_token"].append((last - first) / (tokens - 1))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(url: str, model: str, clients: int, seconds: float, server_pid: int) -> dict[str, float]:
    out: dict[str, list[float]] = {"ttft": [], "per_token": [], "tokens": []}
    async with httpx.AsyncClient(timeout=300) as h:  # load the model (and export its ONNX graph) before timing
        body = {"model": model, "prompt": "x", "max_tokens": 4, "temperature": 0}
        (await h.post(f"{url}/completions", json=body)).raise_for_status()
    cpu0, start = _cpu_s(server_pid), time.perf_counter()
    await asyncio.gather(*(_client(url, model, start + seconds, out, i) for i in range(clients)))
    wall, cpu = time.perf_counter() - start, _cpu_s(server_pid) - cpu0

    def pct(values: list[float], q: int) -> float:
        return 1000 * statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else float("nan")

    return {
        "tokens_per_s": sum(out["tokens"]) / wall,
        "ttft_ms_p50": pct(out["ttft"], 50),
        "ttft_ms_p99": pct(out["ttft"], 99),
        "ms_per_token_p50": pct(out["per_token"], 50),
        "ms_per_token_p99": pct(out["per_token"], 99),
        "server_cpu_ms_per_token": 1000 * cpu / max(1, sum(out["tokens"])),
        "load_1min": os.getloadavg()[0],
    }


MODES = ("batched", "one-at-a-time")
Key = tuple[str, str, int, int, str]  # model, runtime, threads, clients, mode


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _rows(
    results: dict[Key, list[dict[str, float]]], runtimes: list[str], threads: list[int], counts: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for model in MODELS:
        for t in threads:
            for n in counts:
                for rt in runtimes:
                    b, o = results[(model, rt, t, n, "batched")], results[(model, rt, t, n, "one-at-a-time")]
                    tok = [r["tokens_per_s"] for r in b]
                    row = {
                        "model": model,
                        "threads": t,
                        "clients": n,
                        "runtime": rt,
                        "batched tok/s (min-max)": f"{statistics.median(tok):.0f} ({min(tok):.0f}-{max(tok):.0f})",
                        "one-at-a-time tok/s": round(_median(o, "tokens_per_s"), 1),
                        "batched/one": round(_median(b, "tokens_per_s") / _median(o, "tokens_per_s"), 2),
                        "server CPU ms/token batched/one": (
                            f"{_median(b, 'server_cpu_ms_per_token'):.2f}/{_median(o, 'server_cpu_ms_per_token'):.2f}"
                        ),
                        "TTFT p50/p99 ms (batched)": f"{_median(b, 'ttft_ms_p50'):.0f}/{_median(b, 'ttft_ms_p99'):.0f}",
                        "TTFT p50/p99 ms (one)": f"{_median(o, 'ttft_ms_p50'):.0f}/{_median(o, 'ttft_ms_p99'):.0f}",
                        "ms/token p50/p99 (batched)": (
                            f"{_median(b, 'ms_per_token_p50'):.1f}/{_median(b, 'ms_per_token_p99'):.1f}"
                        ),
                        "ms/token p50/p99 (one)": (
                            f"{_median(o, 'ms_per_token_p50'):.1f}/{_median(o, 'ms_per_token_p99'):.1f}"
                        ),
                    }
                    if rt != runtimes[0]:  # against the first runtime (PyTorch), both batched
                        first = results[(model, runtimes[0], t, n, "batched")]
                        row[f"vs {runtimes[0]} (batched)"] = round(
                            _median(b, "tokens_per_s") / _median(first, "tokens_per_s"), 2
                        )
                    rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runtimes", default="torch,onnx-int8")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import report

    counts = [int(c) for c in args.clients.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    runtimes = args.runtimes.split(",")
    configs = [(rt, t, mode) for t in threads for rt in runtimes for mode in MODES]
    results: dict[Key, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        _make_models(runs)
        for r in range(args.rounds):
            for rt, t, mode in configs if r % 2 == 0 else configs[::-1]:
                proc, url = _start_server(runs, 16 if mode == "batched" else 1, t, rt)
                try:
                    for model in MODELS:
                        for n in counts:
                            m = asyncio.run(_load(url, model, n, args.seconds, proc.pid))
                            results.setdefault((model, rt, t, n, mode), []).append(m)
                            print(
                                f"round {r + 1} {rt} {t}t {mode} {model} x{n}: {m['tokens_per_s']:.0f} tok/s, "
                                f"{m['server_cpu_ms_per_token']:.2f} server CPU ms/token, load {m['load_1min']:.1f}",
                                file=sys.stderr,
                            )
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    report(
        "serving",
        f"autonas serve, streaming clients, greedy {NEW_TOKENS} tokens, median of {args.rounds} rounds x "
        f"{args.seconds:g} s, fresh server per runtime/threads/mode, order reversed every other round",
        _rows(results, runtimes, threads, counts),
        {"raw": {"|".join(map(str, k)): v for k, v in results.items()}, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
