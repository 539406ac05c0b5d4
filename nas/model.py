"""Build any :class:`~nas.space.ArchConfig` as a PyTorch decoder-only transformer.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where the device has them). Module and parameter names follow Hugging Face's Llama
(``q_proj``, ``gate_proj``, ``input_layernorm`` ...) so that :mod:`nas.hf` maps weights one to one.
Decoding uses a preallocated (static) KV cache: fixed shapes are what CUDA graphs and compilers want.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nas.space import ArchConfig


def _norm(arch: ArchConfig) -> nn.Module:
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(arch.d_model, eps=arch.norm_eps)
    return nn.LayerNorm(arch.d_model, eps=arch.norm_eps)


def rope_tables(arch: ArchConfig, length: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [length, head_dim] in the rotate-half layout Llama uses."""
    hd = arch.head_dim
    inv_freq = 1.0 / (arch.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, hd]; cos/sin: [T, hd]."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


class KVCache:
    """Preallocated per-layer keys and values, [B, n_kv_heads, max_len, head_dim] each.

    ``pos`` is the number of positions filled. The model writes the new keys at ``pos`` and advances it
    once per forward call, after all layers.
    """

    def __init__(self, arch: ArchConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, arch.n_kv_heads, max_len, arch.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(arch.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(arch.n_layers)]
        self.max_len = max_len
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0


class Attention(nn.Module):
    def __init__(self, arch: ArchConfig, layer: int):
        super().__init__()
        self.arch, self.layer = arch, layer
        hd = arch.head_dim
        self.q_proj = nn.Linear(arch.d_model, arch.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(arch.d_model, arch.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(arch.d_model, arch.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(arch.n_heads * hd, arch.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        arch = self.arch
        b, t, _ = x.shape
        hd = arch.head_dim
        q = self.q_proj(x).view(b, t, arch.n_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, arch.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, arch.n_kv_heads, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.pos
            cache.k[self.layer][:, :, past : past + t] = k
            cache.v[self.layer][:, :, past : past + t] = v
            k = cache.k[self.layer][:, :, : past + t]
            v = cache.v[self.layer][:, :, : past + t]
        if arch.n_kv_heads != arch.n_heads:
            rep = arch.n_heads // arch.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk appended to a non-empty cache: query i sees keys up to past + i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, arch.n_heads * hd))


class MLP(nn.Module):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.swiglu = arch.activation == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.down_proj = nn.Linear(arch.d_ff, arch.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, arch: ArchConfig, layer: int):
        super().__init__()
        self.input_layernorm = _norm(arch)
        self.self_attn = Attention(arch, layer)
        self.post_attention_layernorm = _norm(arch)
        self.mlp = MLP(arch)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class Generation:
    """What :meth:`CodeLM.generate` produced and why it stopped."""

    tokens: list[int]
    text: str | None = None
    stop_reason: str = "max_tokens"  # max_tokens | eos | stop_string
    prompt_tokens_used: int = 0
    timings_ms: list[float] = field(default_factory=list)


class CodeLM(nn.Module):
    """Decoder-only transformer for one ArchConfig. ``forward(ids) -> logits``."""

    rope_cos: torch.Tensor  # buffers, registered in __init__ when arch.pos == "rope"
    rope_sin: torch.Tensor

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.embed_positions = nn.Embedding(arch.context_length, arch.d_model) if arch.pos == "learned" else None
        self.layers = nn.ModuleList(Block(arch, i) for i in range(arch.n_layers))
        self.norm = _norm(arch)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if arch.pos == "rope":
            cos, sin = rope_tables(arch, arch.context_length)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
        resid_std = std / math.sqrt(2 * self.arch.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm weights keep their ones / zeros
            nn.init.normal_(p, mean=0.0, std=resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """input_ids: [B, T] -> logits [B, T, vocab]. With ``cache``, positions continue from cache.pos."""
        b, t = input_ids.shape
        start = cache.pos if cache is not None else 0
        if start + t > self.arch.context_length:
            raise ValueError(f"sequence of {start + t} tokens exceeds context_length {self.arch.context_length}")
        x = self.embed_tokens(input_ids)
        rope = None
        if self.embed_positions is not None:
            x = x + self.embed_positions(torch.arange(start, start + t, device=input_ids.device))
        else:
            rope = (self.rope_cos[start : start + t], self.rope_sin[start : start + t])
        for layer in self.layers:
            x = layer(x, rope, cache)
        if cache is not None:
            cache.pos += t
        return self.lm_head(self.norm(x))

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.arch, batch, max_len or self.arch.context_length, p.device, p.dtype)

    @torch.no_grad()
    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_id: int | None = None,
        stop: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Sample up to ``max_new_tokens`` after ``prompt`` with a KV cache (batch 1).

        ``temperature == 0`` is greedy. ``top_p < 1`` samples from the smallest set of tokens whose
        probability reaches ``top_p`` (nucleus sampling). Generation ends at ``eos_id`` or as soon as the
        decoded continuation contains a ``stop`` string (needs ``decode``); the text is cut before it.
        A prompt longer than the context keeps its most recent tokens; when the cache fills, the last
        three quarters of the context are re-encoded and decoding continues (a sliding window).
        """
        if stop and decode is None:
            raise ValueError("stop strings need a decode function")
        if max_new_tokens <= 0:
            return Generation(tokens=[], text="" if decode else None)
        self.eval()
        ctx = self.arch.context_length
        device = next(self.parameters()).device
        history = list(prompt)[-(ctx - 1) :] if prompt else []
        if not history:
            raise ValueError("generate needs a non-empty prompt (start with the EOS / document separator token)")
        used = len(history)
        cache = self.new_cache(1)
        logits = self(torch.tensor([history], device=device), cache)[:, -1]
        out: list[int] = []
        result = Generation(tokens=out, prompt_tokens_used=used)
        for _ in range(max_new_tokens):
            nxt = _sample(logits[0].float(), temperature, top_p, generator)
            out.append(nxt)
            history.append(nxt)
            if eos_id is not None and nxt == eos_id:
                out.pop()
                result.stop_reason = "eos"
                break
            if stop and decode is not None:
                text = decode(out)
                cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
                if cut >= 0:
                    result.text, result.stop_reason = text[:cut], "stop_string"
                    return result
            if cache.pos >= ctx:  # slide: re-encode the most recent 3/4 of the window
                keep = history[-(3 * ctx // 4) :]
                cache.reset()
                logits = self(torch.tensor([keep], device=device), cache)[:, -1]
            else:
                logits = self(torch.tensor([[nxt]], device=device), cache)[:, -1]
        if decode is not None:
            result.text = decode(out)
        return result


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p  # always keeps the top token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def build_model(arch: ArchConfig, seed: int | None = None) -> CodeLM:
    """A freshly initialised model (deterministic when ``seed`` is given)."""
    if seed is None:
        return CodeLM(arch)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return CodeLM(arch)
    finally:
        torch.random.set_rng_state(state)
