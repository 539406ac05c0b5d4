"""Measurements of a model: size, cost, quality (bits per byte) and speed.

Bits per byte is the quality number everywhere in this project: the summed negative log-likelihood of the
validation text (in bits) divided by its length in UTF-8 bytes. Unlike per-token loss it does not depend
on the tokenizer, so a byte model and a BPE-8k model are compared on the same scale; a model that
predicts uniformly over 256 bytes scores exactly 8.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from harness.run_files import EVAL_BYTES


class ArchFigures(Protocol):
    """The architecture figures a measurement reads (nas's ArchConfig has them; harness does not import nas)."""

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


class LanguageModel(Protocol):
    """What evaluate_bpb calls on a model: nas.model.CodeLM is one, so is harness.scoring's remote model.

    A structural type because the fixed measurement may not import the editable model code."""

    training: bool

    @property
    def arch(self) -> ArchFigures: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class CachedLanguageModel(LanguageModel, Protocol):
    """A LanguageModel that decodes with a KV cache, as measure_latency needs."""

    def new_cache(self, batch: int = 1) -> Any: ...


@dataclass(frozen=True)
class EvalResult:
    bpb: float
    loss_per_token: float  # nats
    tokens: int
    bytes: int


def eval_token_count(tokens: np.ndarray, token_bytes: np.ndarray, max_bytes: int | None) -> int:
    """How many leading tokens cover at most ``max_bytes`` bytes of text (all when None).

    Capping by bytes rather than tokens makes different tokenizers score the same stretch of text.
    """
    if max_bytes is None or tokens.size == 0:
        return int(tokens.size)
    cum = np.cumsum(token_bytes[np.asarray(tokens[: max_bytes + 1], dtype=np.int64)])
    return int(np.searchsorted(cum, max_bytes, side="right"))


@torch.no_grad()
def evaluate_bpb(
    model: LanguageModel,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    max_bytes: int | None = EVAL_BYTES,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Bits per byte over the first ``max_bytes`` of ``tokens`` in non-overlapping context windows.

    Every token after the first is predicted exactly once; each window's first token is its context
    start (standard non-overlapping evaluation). Loss is summed in fp32.
    """
    device = torch.device(device or next(model.parameters()).device)
    was_training = model.training
    model.eval()
    n = eval_token_count(tokens, token_bytes, max_bytes)
    if n < 2:
        raise ValueError("evaluation split has fewer than 2 tokens")
    ctx = model.arch.context_length
    data = torch.from_numpy(np.asarray(tokens[:n], dtype=np.int64))
    tb = torch.from_numpy(token_bytes.astype(np.int64))
    starts = list(range(0, n - 1, ctx))
    total_nats, total_bytes, total_tokens = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        lengths = [min(ctx, n - 1 - s) for s in group]
        width = max(lengths)
        x = torch.zeros(len(group), width, dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, (s, ln) in enumerate(zip(group, lengths, strict=True)):
            x[row, :ln] = data[s : s + ln]
            y[row, :ln] = data[s + 1 : s + 1 + ln]
        x, y_dev = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        nats = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y_dev.view(-1), ignore_index=-100, reduction="sum"
        )
        total_nats += float(nats)
        valid = y[y >= 0]
        total_tokens += int(valid.numel())
        total_bytes += int(tb[valid].sum())
    if was_training:
        model.train()
    return EvalResult(
        bpb=total_nats / math.log(2) / max(total_bytes, 1),
        loss_per_token=total_nats / max(total_tokens, 1),
        tokens=total_tokens,
        bytes=total_bytes,
    )


@dataclass(frozen=True)
class LatencyResult:
    """Batch-1 latency of one measurement session.

    A machine's load comes and goes in bursts far longer than one decode step, so the steps of one repeat
    are not independent samples: the robust figure is the median over repeats of each repeat's median step
    (``decode_ms_p50``), and the spread of those per-repeat medians says how far one session can be trusted.
    """

    device: str
    prompt_tokens: int
    decode_tokens: int
    prefill_ms_p50: float
    prefill_ms_p90: float
    decode_ms_p50: float  # per token, with KV cache, batch 1: median of the per-repeat medians
    decode_ms_p90: float  # over all steps of all repeats
    decode_ms_p50_repeats: tuple[float, ...] = ()  # each repeat's median step

    @property
    def decode_ms_p50_min(self) -> float:
        return min(self.decode_ms_p50_repeats, default=self.decode_ms_p50)

    @property
    def decode_ms_p50_max(self) -> float:
        return max(self.decode_ms_p50_repeats, default=self.decode_ms_p50)

    def as_metrics(self) -> dict[str, float | int | str]:
        return {
            "latency_ms_prefill_p50": self.prefill_ms_p50,
            "latency_ms_prefill_p90": self.prefill_ms_p90,
            "latency_ms_p50": self.decode_ms_p50,
            "latency_ms_p90": self.decode_ms_p90,
            "latency_ms_p50_min": self.decode_ms_p50_min,  # the spread of the per-repeat medians
            "latency_ms_p50_max": self.decode_ms_p50_max,
            "latency_ms_spread": self.decode_ms_p50_max - self.decode_ms_p50_min,
            "latency_repeats": len(self.decode_ms_p50_repeats),
            "latency_device": self.device,
        }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    model: CachedLanguageModel,
    prompt_tokens: int = 32,
    decode_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> LatencyResult:
    """Batch-1 prompt prefill and per-token decode latency with the KV cache (greedy, fixed inputs).

    Warm-up passes run first (allocator, kernel selection); every decode step is timed on its own, with
    a device synchronisation on CUDA. The decode p50 is the median of the per-repeat median steps (robust to
    a burst of load during one repeat), reported with the per-repeat medians; p90 is over all steps.
    """
    model.eval()
    device = next(model.parameters()).device
    ctx = model.arch.context_length
    prompt_tokens = max(1, min(prompt_tokens, ctx - 1))
    decode_tokens = max(1, min(decode_tokens, ctx - prompt_tokens))
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.arch.vocab_size, (1, prompt_tokens), generator=g).to(device)
    cache = model.new_cache(1)
    prefill, decode, per_repeat = [], [], []
    for r in range(warmup + repeats):
        cache.reset()
        _sync(device)
        t0 = time.perf_counter()
        logits = model(prompt, cache)
        nxt = logits[:, -1:].argmax(-1)
        _sync(device)
        t1 = time.perf_counter()
        steps = []
        for _ in range(decode_tokens):
            s0 = time.perf_counter()
            logits = model(nxt, cache)
            nxt = logits[:, -1:].argmax(-1)
            _sync(device)
            steps.append((time.perf_counter() - s0) * 1e3)
        if r >= warmup:
            prefill.append((t1 - t0) * 1e3)
            decode.extend(steps)
            per_repeat.append(statistics.median(steps))
    return LatencyResult(
        device=str(device),
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        prefill_ms_p50=_percentile(prefill, 0.5),
        prefill_ms_p90=_percentile(prefill, 0.9),
        decode_ms_p50=statistics.median(per_repeat),
        decode_ms_p90=_percentile(decode, 0.9),
        decode_ms_p50_repeats=tuple(per_repeat),
    )


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory: CUDA allocator peak on a GPU; on CPU the process's peak resident set (whole process)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


__all__ = ["EvalResult", "evaluate_bpb", "LatencyResult", "measure_latency", "peak_memory_mb", "asdict"]
