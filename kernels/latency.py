"""Batch-1 decoding speed: prefill and per-token latency (p50/p90) with the KV cache, in four modes.

- ``eager``: the model's own cached forward (``CodeLM.forward(token, cache)``): the cache is preallocated but
  each step slices it to the filled length, so shapes change every token.
- ``static``: :class:`StaticDecodeStep`, one token against the *whole* preallocated cache with a position
  tensor and a mask, written in place with ``index_copy_``. Every step has the same shapes and no host-side
  integers, which is what CUDA graphs and ``torch.compile`` need; greedy argmax is part of the step and the
  next token is fed back on the device, so no host sync is needed between tokens.
- ``compile``: the static step through ``torch.compile`` (``mode="reduce-overhead"`` on CUDA, which captures
  CUDA graphs itself; the default Inductor mode on CPU).
- ``cuda-graph``: the static step captured once with ``torch.cuda.CUDAGraph`` and replayed per token.

On CPU the thread count matters as much as the kernels: ``threads`` sets ``torch.set_num_threads`` for the
measurement and restores it after.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.metrics import _percentile, _sync
from nas.model import Block, CodeLM, KVCache, apply_rope

MODES = ("eager", "static", "compile", "cuda-graph")


class StaticDecodeStep(torch.nn.Module):
    """``(token [1, 1], position [1]) -> (logits [1, vocab], next token [1, 1])`` with the cache updated in place.

    Uses the model's own modules and the tensors of a :class:`KVCache` (batch 1), so a prefill through the
    ordinary forward fills exactly the buffers the static steps read.
    """

    slots: torch.Tensor  # a buffer: declared so that it reads as a tensor, not nn.Module's Tensor | Module

    def __init__(self, model: CodeLM, cache: KVCache):
        super().__init__()
        self.model, self.cache = model.eval(), cache
        self.register_buffer("slots", torch.arange(cache.max_len, device=cache.k[0].device), persistent=False)

    def forward(self, token: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, arch = self.model, self.model.arch
        hd, rep = arch.head_dim, arch.n_heads // arch.n_kv_heads
        x = m.embed_tokens(token)  # [1, 1, d]
        rope = None
        if m.embed_positions is not None:
            x = x + m.embed_positions(position)[None]
        else:
            # buffers; cast, not get_buffer, keeps the traced step (compile, CUDA graph) as it was
            cos, sin = cast(torch.Tensor, m.rope_cos), cast(torch.Tensor, m.rope_sin)
            rope = (cos.index_select(0, position), sin.index_select(0, position))
        visible = (self.slots <= position).view(1, 1, 1, -1)  # attend to every filled slot, this one included
        for i, module in enumerate(m.layers):
            layer = cast(Block, module)  # m.layers is an nn.ModuleList of Blocks
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, 1, arch.n_heads, hd).transpose(1, 2)
            k = attn.k_proj(h).view(1, 1, arch.n_kv_heads, hd).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, arch.n_kv_heads, hd).transpose(1, 2)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            self.cache.k[i].index_copy_(2, position, k)
            self.cache.v[i].index_copy_(2, position, v)
            k_all, v_all = self.cache.k[i], self.cache.v[i]
            if rep > 1:
                k_all, v_all = k_all.repeat_interleave(rep, dim=1), v_all.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=visible)
            x = x + attn.o_proj(y.transpose(1, 2).reshape(1, 1, arch.n_heads * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = m.lm_head(m.norm(x))[:, -1]
        return logits, logits.argmax(-1, keepdim=True)


@dataclass(frozen=True)
class DecodeLatency:
    mode: str
    device: str
    threads: int
    prompt_tokens: int
    decode_tokens: int
    prefill_ms_p50: float
    prefill_ms_p90: float
    decode_ms_p50: float
    decode_ms_p90: float
    tokens: tuple[int, ...]  # the greedy continuation of the last repeat (equal across modes when they agree)
    # how many of ``tokens`` the model's own eager forward also picks: a mode that decodes other tokens than
    # the model is fast at something else (on an H200 the cuda-graph mode drifted), so its time is no result
    tokens_equal_eager: int | None = None

    @property
    def agrees_with_eager(self) -> bool:
        return self.tokens_equal_eager is None or self.tokens_equal_eager == len(self.tokens)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        return d


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (None: leave as is); restored afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _stepper(model: CodeLM, cache: KVCache, mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(token, position) -> next token`` for the mode; ``token`` and ``position`` are device tensors
    the caller updates in place between calls."""
    device = cache.k[0].device
    if mode == "eager":

        def eager(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            return model(token, cache)[:, -1:].argmax(-1)

        return eager
    step = StaticDecodeStep(model, cache)
    if mode == "static":
        return lambda token, position: step(token, position)[1]
    if mode == "compile":
        compiled = torch.compile(
            step, mode="reduce-overhead" if device.type == "cuda" else "default", fullgraph=True, dynamic=False
        )
        return lambda token, position: compiled(token, position)[1]
    if mode == "cuda-graph":
        return _cuda_graph(step, device)
    raise UserError(f"unknown latency mode {mode!r}: use {', '.join(MODES)}")


def _cuda_graph(step: StaticDecodeStep, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Capture one decode step; each call copies its inputs into the captured ones and replays."""
    token_in = torch.zeros(1, 1, dtype=torch.long, device=device)
    pos_in = torch.zeros(1, dtype=torch.long, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    # the warm-up writes slot 0 of the cache: keep a copy to put back
    saved = [(k.clone(), v.clone()) for k, v in zip(step.cache.k, step.cache.v, strict=True)]
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            step(token_in, pos_in)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        outputs = step(token_in, pos_in)  # both kept referenced for the graph's life: every replay writes them
    for (k, v), (k0, v0) in zip(zip(step.cache.k, step.cache.v, strict=True), saved, strict=True):
        k.copy_(k0)
        v.copy_(v0)

    def replay(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        token_in.copy_(token)
        pos_in.copy_(position)
        graph.replay()
        return outputs[1]  # the closure holds both outputs, the logits too

    return replay


@torch.no_grad()
def measure_decode(
    model: CodeLM,
    mode: str = "eager",
    prompt_tokens: int = 32,
    decode_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> DecodeLatency:
    """Greedy batch-1 decoding after a prompt; each decode step timed on its own (device-synchronised)."""
    if mode not in MODES:
        raise UserError(f"unknown latency mode {mode!r}: use {', '.join(MODES)}")
    device = next(model.parameters()).device
    if mode == "cuda-graph" and device.type != "cuda":
        raise UserError("cuda-graph latency needs the model on a CUDA device (use static or compile on CPU)")
    model.eval()
    ctx = model.arch.context_length
    prompt_tokens = max(1, min(prompt_tokens, ctx - 1))
    decode_tokens = max(1, min(decode_tokens, ctx - prompt_tokens))
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.arch.vocab_size, (1, prompt_tokens), generator=g).to(device)
    with cpu_threads(threads if device.type == "cpu" else None) as n_threads:
        cache = model.new_cache(1)
        step = _stepper(model, cache, mode)
        position = torch.zeros(1, dtype=torch.long, device=device)
        prefill, decode, tokens = [], [], []
        for r in range(warmup + repeats):
            cache.reset()
            _sync(device)
            t0 = time.perf_counter()
            token = model(prompt, cache)[:, -1:].argmax(-1)
            _sync(device)
            t1 = time.perf_counter()
            position.fill_(prompt_tokens)
            out = [int(token)]
            steps = []
            for _ in range(decode_tokens - 1):
                s0 = time.perf_counter()
                token = step(token, position).clone()
                _sync(device)
                steps.append((time.perf_counter() - s0) * 1e3)
                position.add_(1)  # (the eager forward advances cache.pos itself)
                out.append(int(token))
            if r >= warmup:
                prefill.append((t1 - t0) * 1e3)
                decode.extend(steps)
                tokens = out
    decode = decode or [0.0]
    equal = None
    if mode != "eager":
        equal = sum(a == b for a, b in zip(tokens, _eager_greedy(model, prompt, decode_tokens), strict=False))
    return DecodeLatency(
        mode=mode,
        device=str(device),
        threads=n_threads,
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        prefill_ms_p50=_percentile(prefill, 0.5),
        prefill_ms_p90=_percentile(prefill, 0.9),
        decode_ms_p50=_percentile(decode, 0.5),
        decode_ms_p90=_percentile(decode, 0.9),
        tokens=tuple(tokens),
        tokens_equal_eager=equal,
    )


def _eager_greedy(model: CodeLM, prompt: torch.Tensor, decode_tokens: int) -> list[int]:
    """The reference continuation: the model's own greedy generation (its cached forward), untimed."""
    return model.generate(prompt[0].tolist(), decode_tokens, temperature=0.0).tokens
