"""Closed-form parameter and byte counts for an :class:`~nas.space.ArchConfig`.

These are computed without building the model so that size constraints reject an architecture before it
costs any memory or training. A test checks them against the built module, parameter for parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from nas.space import ArchConfig

FP32_SCALE_BYTES = 4


@dataclass(frozen=True)
class ParamCount:
    """Parameters split the way scaling-law work splits them.

    ``embedding`` holds the token embedding, the learned position table and an untied output head:
    the parts whose size is set by vocabulary and context rather than by the network's shape.
    """

    total: int
    embedding: int
    matrix: int  # entries of 2-D weight matrices (all of them, embeddings included)
    matrix_rows: int  # rows of those matrices: one int8 scale each
    vector: int  # norm weights and biases, kept in fp32 even when quantized

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def _norm_params(arch: ArchConfig) -> int:
    return arch.d_model * (2 if arch.norm == "layernorm" else 1)


def count_params(arch: ArchConfig) -> ParamCount:
    """Exact parameter count of the model :mod:`nas.model` builds for ``arch``."""
    d, v, hd = arch.d_model, arch.vocab_size, arch.head_dim
    q_out, kv_out = arch.n_heads * hd, arch.n_kv_heads * hd
    matrices: list[tuple[int, int]] = [(v, d)]  # (rows=out, cols=in) of each weight matrix
    embedding = v * d
    if arch.pos == "learned":
        matrices.append((arch.context_length, d))
        embedding += arch.context_length * d
    per_layer = [(q_out, d), (kv_out, d), (kv_out, d), (d, q_out)]
    if arch.activation == "swiglu":
        per_layer += [(arch.d_ff, d), (arch.d_ff, d), (d, arch.d_ff)]
    else:
        per_layer += [(arch.d_ff, d), (d, arch.d_ff)]
    matrices += per_layer * arch.n_layers
    if not arch.tie_embeddings:
        matrices.append((v, d))
        embedding += v * d
    vector = _norm_params(arch) * (2 * arch.n_layers + 1)
    matrix = sum(r * c for r, c in matrices)
    rows = sum(r for r, _ in matrices)
    return ParamCount(total=matrix + vector, embedding=embedding, matrix=matrix, matrix_rows=rows, vector=vector)


def size_bytes(arch: ArchConfig, dtype: str) -> int:
    """Bytes of the weights stored at ``dtype`` (fp32, fp16/bf16 or int8).

    int8 means per-output-channel symmetric quantization of every 2-D weight with one fp32 scale per row;
    norm weights stay fp32. A tied embedding is stored once.
    """
    c = count_params(arch)
    if dtype == "fp32":
        return 4 * c.total
    if dtype in ("fp16", "bf16"):
        return 2 * c.total
    if dtype == "int8":
        return c.matrix + FP32_SCALE_BYTES * c.matrix_rows + 4 * c.vector
    raise ValueError(f"unknown dtype {dtype!r}: use fp32, fp16, bf16 or int8")


def flops_per_token(arch: ArchConfig, context: int | None = None) -> int:
    """Forward FLOPs per token (multiply-add = 2), Kaplan et al. style.

    2 x (every matrix a token passes through, including the output head but not the embedding lookup)
    plus the attention score and value products at an average context of ``context`` tokens
    (default: half the context window, the average position in a full training sequence).
    """
    c = count_params(arch)
    lookup = arch.vocab_size * arch.d_model + (arch.context_length * arch.d_model if arch.pos == "learned" else 0)
    dense = c.matrix - lookup
    if arch.tie_embeddings:
        dense += arch.vocab_size * arch.d_model  # the tied table is also the output head
    ctx = arch.context_length // 2 if context is None else context
    attention = 2 * 2 * arch.n_layers * ctx * arch.n_heads * arch.head_dim
    return 2 * dense + attention


def arch_metrics(arch: ArchConfig) -> dict[str, int]:
    """Size and cost figures known before training (units in the keys)."""
    c = count_params(arch)
    return {
        "params": c.total,
        "params_non_embedding": c.non_embedding,
        "size_bytes_fp32": size_bytes(arch, "fp32"),
        "size_bytes_fp16": size_bytes(arch, "fp16"),
        "size_bytes_int8": size_bytes(arch, "int8"),
        "flops_per_token": flops_per_token(arch),
        "n_layers": arch.n_layers,
        "d_model": arch.d_model,
    }
