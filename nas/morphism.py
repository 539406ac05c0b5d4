"""Function-preserving growth: a child architecture initialised from its trained parent computes the same function.

Evolution pays for a whole training per child unless the child can start where its parent ended (Net2Net, Chen et
al. 2016; network morphism, Wei et al. 2016). Three growth moves keep the network's function exactly (up to fp32
rounding) and so let a child continue from its parent's weights:

- **wider FFN** (``d_ff`` up): each new hidden unit copies a randomly chosen existing unit (its gate/up rows), and
  every copy of a unit shares that unit's outgoing ``down_proj`` column equally (Net2Net's split): the sum is the
  parent's, and the copies can diverge in training because the split is by unit, not by zero.
- **more heads** (``n_heads`` up with the head size and the grouping ratio ``n_heads / n_kv_heads`` unchanged, so
  every old head keeps its key/value head): the new heads get fresh query/key/value weights and zero columns in
  ``o_proj``, so they add nothing until trained.
- **deeper** (``n_layers`` up): new blocks are inserted after the parent's (interleaved evenly), each with zero
  ``o_proj`` and ``down_proj``, so each is the identity on the residual stream until trained.

Any other change (width of the residual stream, activation, norm, positions, vocabulary, tying, a smaller size)
cannot keep the function and returns the reason instead; the search then trains that child from scratch and
records which start it had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from nas.model import MLP, Attention, Block, CodeLM, build_model
from nas.space import ArchConfig

#: genes a preserving child may change (each only upwards)
GROWABLE = ("d_ff", "n_heads", "n_kv_heads", "n_layers")


@dataclass(frozen=True)
class Inheritance:
    """How a child starts: from its parent (``moves`` names what grew) or from scratch (``reason`` says why)."""

    preserved: bool
    moves: tuple[str, ...] = ()
    reason: str = ""

    def describe(self) -> str:
        return f"from parent ({', '.join(self.moves) or 'same shape'})" if self.preserved else f"scratch: {self.reason}"


def plan_inheritance(parent: ArchConfig, child: ArchConfig) -> Inheritance:
    """Whether ``child`` can start from ``parent``'s weights with the same function, and by which moves."""
    fixed = {k: v for k, v in parent.model_dump().items() if k not in GROWABLE and k != "head_size"}
    changed = [k for k, v in fixed.items() if child.model_dump()[k] != v]
    if changed:
        return Inheritance(False, reason=f"{', '.join(changed)} changed")
    if child.head_dim != parent.head_dim:
        return Inheritance(False, reason=f"head size {parent.head_dim} -> {child.head_dim}")
    shrunk = [g for g in GROWABLE if getattr(child, g) < getattr(parent, g)]
    if shrunk:
        return Inheritance(False, reason=f"{', '.join(shrunk)} smaller (pruning, not growth)")
    if child.n_heads // child.n_kv_heads != parent.n_heads // parent.n_kv_heads:
        return Inheritance(False, reason="the query heads per key/value head changed (old heads would change group)")
    moves = tuple(
        name
        for name, grew in (
            ("wider FFN", child.d_ff > parent.d_ff),
            ("more heads", child.n_heads > parent.n_heads),
            ("deeper", child.n_layers > parent.n_layers),
        )
        if grew
    )
    return Inheritance(True, moves)


def _layer_sources(parent_layers: int, child_layers: int) -> list[int | None]:
    """For each child layer, the parent layer it copies, or None for an inserted identity layer (spread evenly)."""
    extra = child_layers - parent_layers
    sources: list[int | None] = []
    for i in range(parent_layers):
        sources.append(i)
        # after parent layer i, insert the identity layers that fall in this stretch
        sources.extend([None] * ((i + 1) * extra // parent_layers - i * extra // parent_layers))
    return sources


@torch.no_grad()
def grow(parent: CodeLM, child_arch: ArchConfig, seed: int = 0) -> tuple[CodeLM, Inheritance]:
    """The child model: grown from ``parent`` when :func:`plan_inheritance` allows it, else freshly initialised."""
    how = plan_inheritance(parent.arch, child_arch)
    child = build_model(child_arch, seed=seed)
    if not how.preserved:
        return child, how
    g = torch.Generator().manual_seed(seed)
    p_arch, hd = parent.arch, child_arch.head_dim
    child.embed_tokens.weight.copy_(parent.embed_tokens.weight)
    if parent.embed_positions is not None and child.embed_positions is not None:
        child.embed_positions.weight.copy_(parent.embed_positions.weight)
    child.norm.load_state_dict(parent.norm.state_dict())
    if not child_arch.tie_embeddings:
        child.lm_head.weight.copy_(parent.lm_head.weight)
    for c_module, src in zip(child.layers, _layer_sources(p_arch.n_layers, child_arch.n_layers), strict=True):
        c_layer = cast(Block, c_module)  # nn.ModuleList items are typed as Module
        if src is None:  # identity on the residual stream until trained
            c_layer.self_attn.o_proj.weight.zero_()
            c_layer.mlp.down_proj.weight.zero_()
            continue
        p_layer = cast(Block, parent.layers[src])
        c_layer.input_layernorm.load_state_dict(p_layer.input_layernorm.state_dict())
        c_layer.post_attention_layernorm.load_state_dict(p_layer.post_attention_layernorm.state_dict())
        _grow_attention(p_layer.self_attn, c_layer.self_attn, p_arch.n_heads, p_arch.n_kv_heads, hd)
        _grow_mlp(p_layer.mlp, c_layer.mlp, g)
    return child, how


def _grow_attention(p: Attention, c: Attention, heads: int, kv_heads: int, hd: int) -> None:
    """Old heads copied in place; new heads keep their fresh q/k/v rows and get zero ``o_proj`` columns."""
    c.q_proj.weight[: heads * hd] = p.q_proj.weight
    c.k_proj.weight[: kv_heads * hd] = p.k_proj.weight
    c.v_proj.weight[: kv_heads * hd] = p.v_proj.weight
    c.o_proj.weight[:, : heads * hd] = p.o_proj.weight
    c.o_proj.weight[:, heads * hd :] = 0


def _grow_mlp(p: MLP, c: MLP, g: torch.Generator) -> None:
    """Net2Net split: unit ``j`` of the child copies parent unit ``source[j]``; outgoing weights are shared."""
    d_ff, new_d_ff = p.up_proj.weight.shape[0], c.up_proj.weight.shape[0]
    source = torch.cat([torch.arange(d_ff), torch.randint(0, d_ff, (new_d_ff - d_ff,), generator=g)])
    copies = torch.bincount(source, minlength=d_ff).to(p.down_proj.weight.dtype)
    c.up_proj.weight.copy_(p.up_proj.weight[source])
    if p.swiglu:
        c.gate_proj.weight.copy_(p.gate_proj.weight[source])
    c.down_proj.weight.copy_(p.down_proj.weight[:, source] / copies[source])
