"""Pruning: unstructured (magnitude, Wanda) and structured (FFN channels), before a recovery fine-tune.

- **magnitude**: per linear layer, the smallest ``|w|`` are zeroed.
- **Wanda** (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs"): the score is
  ``|w_ij| * ||x_j||_2`` with input-activation norms from a few calibration batches, compared within
  each output row; no retraining is needed to pick the weights, and it beats magnitude on LLMs.
- **FFN channels** (structured): each layer keeps its most important intermediate channels (score:
  the down projection's column norm times the channel's activation norm), so the dense model really
  shrinks (a smaller ``d_ff``) and runs faster on a CPU, where unstructured zeros give no speed.

Embeddings and the LM head are never pruned (the head carries the vocabulary). Unstructured sparsity
is kept through recovery by the trainer's ``keep_zeros`` (zeros stay zero after every step). 2:4
semi-structured sparsity needs ``torch.sparse.to_sparse_semi_structured`` on a CUDA GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from harness.errors import UserError
from nas.model import Block, CodeLM, build_model
from nas.space import ArchConfig


@dataclass(frozen=True)
class PruneSpec:
    method: str
    sparsity: float

    @classmethod
    def parse(cls, text: str) -> PruneSpec:
        """``wanda:0.5``, ``magnitude:0.4``, ``ffn:0.5``, ``heads:0.5`` or ``2:4`` (50 % by construction)."""
        t = text.strip().lower()
        if t == "2:4":
            return cls("2:4", 0.5)
        m = re.fullmatch(r"(magnitude|wanda|ffn|heads):([0-9.eE+-]+)", t)
        if not m:
            raise UserError(
                f"unknown pruning {text!r}: use magnitude:<s>, wanda:<s>, ffn:<s>, heads:<s> (s in (0, 1)) or 2:4"
            )
        try:
            s = float(m.group(2))
        except ValueError:
            raise UserError(f"cannot read the sparsity in {text!r}") from None
        if not 0 < s < 1:
            raise UserError(f"sparsity must be in (0, 1), got {s:g}")
        return cls(m.group(1), s)


def prunable_linears(model: CodeLM) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@torch.no_grad()
def input_norms(
    model: CodeLM, tokens: np.ndarray, batches: int = 8, batch_size: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of every prunable linear layer over calibration windows."""
    ctx = model.arch.context_length
    rng = np.random.default_rng(seed)
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, lin in prunable_linears(model).items():

        def hook(mod, args, out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)

        hooks.append(lin.register_forward_hook(hook))
    model.eval()
    device = next(model.parameters()).device
    try:
        for _ in range(batches):
            starts = rng.integers(0, max(1, tokens.size - ctx - 1), size=batch_size)
            x = torch.from_numpy(np.stack([np.asarray(tokens[s : s + ctx], dtype=np.int64) for s in starts])).to(device)
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


@torch.no_grad()
def prune_unstructured(
    model: CodeLM, method: str, sparsity: float, norms: dict[str, torch.Tensor] | None = None
) -> float:
    """Zero ``sparsity`` of every prunable linear weight in place; returns the achieved sparsity."""
    zeros = total = 0
    for name, lin in prunable_linears(model).items():
        w = lin.weight
        if method == "magnitude":
            score = w.abs()
            k = int(round(sparsity * score.numel()))
            if k:
                thresh = score.flatten().kthvalue(k).values
                w.masked_fill_(score <= thresh, 0.0)
        elif method == "wanda":
            if norms is None:
                raise ValueError("Wanda needs calibration activation norms")
            score = w.abs() * norms[name][None, :].to(w.device)
            k = int(round(sparsity * w.shape[1]))  # per output row, as in the paper
            if k:
                idx = score.topk(k, dim=1, largest=False).indices
                w.scatter_(1, idx, 0.0)
        else:
            raise ValueError(f"not an unstructured method: {method}")
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


# cuSPARSELt multiplies fp16/bf16 only: a 2:4 model's weights are stored in fp16 and its activations must
# reach the sparse matmuls in fp16 too, so every forward of a 2:4 model runs under fp16 autocast.
SEMI_STRUCTURED_DTYPE = torch.float16


def require_semi_structured_device() -> None:
    if not torch.cuda.is_available():
        raise UserError(
            "2:4 semi-structured sparsity runs only on a CUDA GPU (torch.sparse.to_sparse_semi_structured); "
            "use magnitude:0.5 or wanda:0.5 on this machine"
        )


@torch.no_grad()
def prune_semi_structured_24(model: CodeLM) -> None:
    """2:4 sparsity in the hardware format (CUDA only); the model must already be on the GPU."""
    require_semi_structured_device()
    for lin in prunable_linears(model).values():
        w = lin.weight
        groups = w.abs().reshape(-1, 4)
        drop = groups.topk(2, dim=1, largest=False).indices
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, drop, False).reshape(w.shape)
        lin.weight = torch.nn.Parameter(to_sparse_semi_structured((w * mask).to(SEMI_STRUCTURED_DTYPE)))


@torch.no_grad()
def densify_semi_structured(model: CodeLM) -> None:
    """Back to ordinary fp32 weights (the 2:4 zeros kept), on the CPU.

    The hardware format is a speed format only: it cannot be saved to safetensors (its storage has no data
    pointer), fine-tuned, or quantized by the int8 path, so everything after the 2:4 measurement works on the
    dense weights with the same zeros, as it does for magnitude and Wanda pruning.
    """
    for lin in prunable_linears(model).values():
        if isinstance(lin.weight, SparseSemiStructuredTensor):
            lin.weight = torch.nn.Parameter(lin.weight.to_dense().float())
    model.float().cpu()


@torch.no_grad()
def prune_ffn_channels(model: CodeLM, sparsity: float, norms: dict[str, torch.Tensor] | None = None) -> CodeLM:
    """A new, smaller dense model keeping ``1 - sparsity`` of each layer's FFN channels (the same count
    in every layer, since ``d_ff`` is one number per architecture)."""
    arch = model.arch
    keep = max(1, int(round(arch.d_ff * (1 - sparsity))))
    small = build_model(ArchConfig.model_validate({**arch.model_dump(), "d_ff": keep}))
    src = model.state_dict()
    dst = {k: v.clone() for k, v in src.items() if ".mlp." not in k}
    for i, module in enumerate(model.layers):
        mlp = cast(Block, module).mlp  # model.layers is an nn.ModuleList of Blocks
        score = mlp.down_proj.weight.norm(dim=0)
        if norms is not None and f"layers.{i}.mlp.down_proj" in norms:
            score = score * norms[f"layers.{i}.mlp.down_proj"].to(score.device)
        idx = score.topk(keep).indices.sort().values
        p = f"layers.{i}.mlp."
        dst[p + "up_proj.weight"] = mlp.up_proj.weight[idx].clone()
        dst[p + "down_proj.weight"] = mlp.down_proj.weight[:, idx].clone()
        if mlp.swiglu:
            dst[p + "gate_proj.weight"] = mlp.gate_proj.weight[idx].clone()
    small.load_state_dict(dst, strict=False)
    return small.eval()


@torch.no_grad()
def prune_attention_heads(model: CodeLM, sparsity: float, norms: dict[str, torch.Tensor] | None = None) -> CodeLM:
    """A new, smaller dense model keeping ``1 - sparsity`` of each layer's key/value head groups (a KV head with the
    query heads that share it, so MHA, GQA and MQA keep their ratio); the survivors keep their size, recorded as
    ``head_size`` in the new config. A group's score is how much it can write into the residual stream: the
    o_proj column norms of its query heads, times their input activation norms when calibration norms are given
    (the Wanda criterion summed per head)."""
    arch = model.arch
    hd, rep = arch.head_dim, arch.n_heads // arch.n_kv_heads
    keep = max(1, int(round(arch.n_kv_heads * (1 - sparsity))))
    if keep == arch.n_kv_heads:
        raise UserError(f"heads:{sparsity:g} keeps all {arch.n_kv_heads} key/value heads: raise the sparsity")
    small = build_model(
        ArchConfig.model_validate({**arch.model_dump(), "n_heads": keep * rep, "n_kv_heads": keep, "head_size": hd})
    )
    dst = {k: v.clone() for k, v in model.state_dict().items() if ".self_attn." not in k}
    for i, module in enumerate(model.layers):
        attn = cast(Block, module).self_attn  # model.layers is an nn.ModuleList of Blocks
        score = attn.o_proj.weight.norm(dim=0)  # one per input feature of o_proj = per (query head, dim)
        if norms is not None and f"layers.{i}.self_attn.o_proj" in norms:
            score = score * norms[f"layers.{i}.self_attn.o_proj"].to(score.device)
        groups = score.view(arch.n_kv_heads, rep * hd).sum(dim=1)
        kv = groups.topk(keep).indices.sort().values
        q_heads = (kv[:, None] * rep + torch.arange(rep)).reshape(-1)
        q_rows = (q_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
        kv_rows = (kv[:, None] * hd + torch.arange(hd)).reshape(-1)
        p = f"layers.{i}.self_attn."
        dst[p + "q_proj.weight"] = attn.q_proj.weight[q_rows].clone()
        dst[p + "k_proj.weight"] = attn.k_proj.weight[kv_rows].clone()
        dst[p + "v_proj.weight"] = attn.v_proj.weight[kv_rows].clone()
        dst[p + "o_proj.weight"] = attn.o_proj.weight[:, q_rows].clone()
    small.load_state_dict(dst, strict=False)
    return small.eval()
