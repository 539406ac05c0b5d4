"""One decode step for several independent sequences at once, each in its own slot of a shared KV cache.

Continuous batching needs what the model's own :class:`~nas.model.KVCache` cannot give: one fill position per
sequence. Here the cache is ``[slots, n_kv_heads, max_len, head_dim]`` per layer, every sequence owns one slot, and
a step takes the slots, tokens and positions of the sequences that are decoding now. Each row attends to the
filled part of its own slot only (a mask from its position), gets the rotary angles of its own position, and
writes its new key and value at that position. A prompt is prefilled through the model's ordinary forward with a
batch-1 cache and copied into its slot, so the logits are the model's own (the serving test checks greedy tokens
against :meth:`nas.model.CodeLM.generate`).

The step uses the model's modules (projections, norms, MLP, head), so any architecture the builder makes decodes
here; GQA repeats the key/value heads as the model does.

:class:`SlotDecoder` is what the engine sees of a runtime (prefill a slot, step some slots, release a slot);
:class:`TorchSlotDecoder` is this module's, :class:`serve.onnx_step.OnnxSlotDecoder` the ONNX Runtime one.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F

from nas.model import Block, CodeLM, apply_rope


class SlotCache:
    """Keys and values of ``slots`` sequences, each up to ``max_len`` tokens (the model's context)."""

    def __init__(self, model: CodeLM, slots: int):
        arch = model.arch
        p = next(model.parameters())
        shape = (slots, arch.n_kv_heads, arch.context_length, arch.head_dim)
        self.k = [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(arch.n_layers)]
        self.v = [torch.zeros(shape, device=p.device, dtype=p.dtype) for _ in range(arch.n_layers)]
        self.slots, self.max_len = slots, arch.context_length
        self.positions = torch.arange(arch.context_length, device=p.device)


@torch.no_grad()
def prefill(model: CodeLM, cache: SlotCache, slot: int, prompt: list[int]) -> torch.Tensor:
    """Run ``prompt`` through the model, store its keys/values in ``slot``; the logits after its last token."""
    if not 0 < len(prompt) <= cache.max_len:
        raise ValueError(f"a prompt of {len(prompt)} tokens does not fit a context of {cache.max_len}")
    one = model.new_cache(1, cache.max_len)
    device = cache.positions.device
    logits = model(torch.tensor([prompt], device=device), one)[0, -1]
    n = len(prompt)
    for layer in range(len(cache.k)):
        cache.k[layer][slot, :, :n] = one.k[layer][0, :, :n]
        cache.v[layer][slot, :, :n] = one.v[layer][0, :, :n]
    return logits


@torch.no_grad()
def decode_step(
    model: CodeLM, cache: SlotCache, slots: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Logits ``[B, vocab]`` for ``tokens [B]`` at ``positions [B]`` (the index each token takes in its slot)."""
    arch = model.arch
    b, hd, rep = tokens.shape[0], arch.head_dim, arch.n_heads // arch.n_kv_heads
    x = model.embed_tokens(tokens[:, None])  # [B, 1, d]
    rope = None
    if model.embed_positions is not None:
        x = x + model.embed_positions(positions)[:, None]
    else:
        cos, sin = cast(torch.Tensor, model.rope_cos), cast(torch.Tensor, model.rope_sin)
        rope = (cos[positions][:, None, None], sin[positions][:, None, None])  # [B, 1, 1, hd]: one angle per row
    filled = int(positions.max()) + 1  # no row reads past this: gather and attend over the filled prefix only
    visible = (cache.positions[None, :filled] <= positions[:, None]).view(b, 1, 1, filled)
    for i, module in enumerate(model.layers):
        layer = cast(Block, module)
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, 1, arch.n_heads, hd).transpose(1, 2)
        k = attn.k_proj(h).view(b, 1, arch.n_kv_heads, hd).transpose(1, 2)
        v = attn.v_proj(h).view(b, 1, arch.n_kv_heads, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cache.k[i][slots, :, positions] = k[:, :, 0]
        cache.v[i][slots, :, positions] = v[:, :, 0]
        k_all, v_all = cache.k[i][slots, :, :filled], cache.v[i][slots, :, :filled]  # [B, n_kv, filled, hd]
        if rep > 1:
            k_all, v_all = k_all.repeat_interleave(rep, dim=1), v_all.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=visible)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(b, 1, arch.n_heads * hd))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.norm(x))[:, -1]


class SlotDecoder(Protocol):
    """What the engine needs of a runtime: fill a slot with a prompt, decode some slots one token each, free a slot.

    Logits come back as float tensors on the CPU (``[vocab]`` from ``prefill``, ``[B, vocab]`` from ``step``, rows in
    the order of ``slots``), owned by the caller. ``runtime`` names what decodes (shown by ``/v1/models``).
    """

    runtime: str

    def prefill(self, slot: int, prompt: list[int]) -> torch.Tensor: ...

    def step(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor: ...

    def release(self, slot: int) -> None: ...


class TorchSlotDecoder:
    """The model's own modules in PyTorch over a :class:`SlotCache` (any slot may decode with any other)."""

    runtime = "torch_fp32"

    def __init__(self, model: CodeLM, slots: int):
        self.model, self.cache = model.eval(), SlotCache(model, slots)

    def prefill(self, slot: int, prompt: list[int]) -> torch.Tensor:
        return prefill(self.model, self.cache, slot, prompt)

    def step(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        device = self.cache.positions.device

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, device=device)

        return decode_step(self.model, self.cache, tensor(slots), tensor(tokens), tensor(positions))

    def release(self, slot: int) -> None:
        """Nothing to do: a slot's stale keys past its new owner's position are never read."""
