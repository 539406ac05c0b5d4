"""The physical floor of batch-1 decoding: this machine's memory bandwidth and the weight bytes one token reads.

A batch-1 decode step reads every weight matrix once (each is used for one matrix-vector product), so no
runtime can decode a token faster than ``weight bytes per token / memory bandwidth``. ``autonas latency``
reports each measured decode time as a multiple of that floor: a multiple near 1 leaves nothing for a faster
kernel to win; a multiple of 3 says the time goes somewhere else (dispatch, cache copies, activations). The
floor assumes the weights come from DRAM: weights that fit in the last-level cache (the ~10M model in int8,
about 11 MB) are read faster than that, and the multiple drops below 1 (measured: 0.47).

- Bandwidth is a large ``torch`` tensor copy (``dst.copy_(src)``, both far beyond the last-level cache) at the
  thread count asked; a copy moves its bytes twice (read ``src``, write ``dst``) and both are counted. The best
  of several rounds is the floor's figure (what the machine can do); the median is kept to show the spread.
- Weight bytes per token count what a step reads in the runtime's format: fp32 4 B per parameter; int8 1 B per
  parameter plus one fp32 scale per output channel; norm weights stay fp32. The token embedding is one row
  (fp32) unless it is tied to ``lm_head``, whose whole matrix the step reads anyway. The KV cache is not a
  weight and is left out: at the short contexts we time (under 200 positions) it is under 5 % of the weights.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Literal

import torch

from kernels.latency import cpu_threads
from nas.model import CodeLM

WeightFormat = Literal["fp32", "int8"]
DEFAULT_ARRAY_MIB = 256  # per array: well beyond any last-level cache this project meets (tens of MiB)


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth of a large copy, counting read and write bytes."""

    threads: int
    array_bytes: int
    rounds: int
    gb_per_s_best: float  # 1 GB = 1e9 bytes
    gb_per_s_median: float

    def floor_ms(self, bytes_per_token: int) -> float:
        """The decode time per token if reading ``bytes_per_token`` once were the only cost."""
        return bytes_per_token / (self.gb_per_s_best * 1e9) * 1e3


def measure_bandwidth(threads: int | None = 1, array_mib: int = DEFAULT_ARRAY_MIB, rounds: int = 5) -> Bandwidth:
    """Copy a ``array_mib`` MiB float32 tensor into another ``rounds`` times (after one untimed touch)."""
    n = array_mib * 2**20 // 4
    with cpu_threads(threads) as n_threads:
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)  # fault the pages in: the first touch is the kernel's, not the memory's
        rates = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            dst.copy_(src)
            elapsed = time.perf_counter() - t0
            rates.append(2 * src.nbytes / elapsed / 1e9)  # read src + write dst
    return Bandwidth(
        threads=n_threads,
        array_bytes=src.nbytes,
        rounds=rounds,
        gb_per_s_best=max(rates),
        gb_per_s_median=statistics.median(rates),
    )


def _matrix_bytes(rows: int, cols: int, fmt: WeightFormat) -> int:
    """A ``[rows, cols]`` weight (rows = output channels) in ``fmt``."""
    if fmt == "fp32":
        return 4 * rows * cols
    return rows * cols + 4 * rows  # int8 values + one fp32 scale per output channel


def weight_bytes_per_token(model: CodeLM, fmt: WeightFormat) -> int:
    """Bytes of weights one batch-1 decode step of ``model`` reads, in runtime format ``fmt``."""
    arch = model.arch
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            rows, cols = module.weight.shape
            total += _matrix_bytes(rows, cols, fmt)
            total += 0 if module.bias is None else 4 * rows
        elif isinstance(module, (torch.nn.RMSNorm, torch.nn.LayerNorm)):
            total += sum(4 * p.numel() for p in module.parameters(recurse=False))
        elif isinstance(module, torch.nn.Embedding) and not (name == "embed_tokens" and arch.tie_embeddings):
            total += 4 * module.embedding_dim  # one row: this token's (or this position's)
    return total


@dataclass(frozen=True)
class Floor:
    """The floor of one model in one format at one thread count."""

    bandwidth: Bandwidth
    weight_format: WeightFormat
    weight_bytes_per_token: int

    @property
    def floor_ms(self) -> float:
        return self.bandwidth.floor_ms(self.weight_bytes_per_token)

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "bandwidth_gb_per_s": self.bandwidth.gb_per_s_best,
            "weight_format": self.weight_format,
            "weight_bytes_per_token": self.weight_bytes_per_token,
            "floor_ms": self.floor_ms,
        }

    def describe(self) -> str:
        return (
            f"{self.bandwidth.threads} thread(s): copy bandwidth {self.bandwidth.gb_per_s_best:.1f} GB/s "
            f"(median {self.bandwidth.gb_per_s_median:.1f}); {self.weight_bytes_per_token / 1e6:.2f} MB of "
            f"{self.weight_format} weights per token -> floor {self.floor_ms:.3f} ms/token"
        )


def floor_per_thread_count(model: CodeLM, threads: list[int], fmt: WeightFormat) -> dict[int, Floor]:
    """One bandwidth measurement per distinct thread count, with ``model``'s weight bytes in ``fmt``."""
    nbytes = weight_bytes_per_token(model, fmt)
    return {n: Floor(measure_bandwidth(n), fmt, nbytes) for n in sorted(set(threads))}
