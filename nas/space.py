"""The architecture search space: one frozen config per decoder-only transformer, and the space of them.

``ArchConfig`` is what every other part of the project passes around: it is hashable (a dict key, a set
member), round-trips through JSON exactly, and is validated on construction so an impossible shape is a
clear error rather than a crash deep inside the model builder. ``SearchSpace`` samples, mutates and
crosses configs through *genes* (head size instead of head count, KV-sharing ratio, FFN multiplier) so
that every draw decodes to a valid config by construction.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import UserError, describe_validation_error
from nas.counting import count_params, size_bytes

Activation = Literal["gelu", "swiglu"]
Norm = Literal["layernorm", "rmsnorm"]
Positions = Literal["rope", "learned"]


class ArchConfig(BaseModel):
    """A decoder-only transformer shape. Frozen and hashable; ``to_json``/``from_json`` round-trip."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_layers: int = Field(4, ge=1, le=128)
    d_model: int = Field(128, ge=8, le=16384)
    n_heads: int = Field(4, ge=1, le=256)
    n_kv_heads: int = Field(4, ge=1, le=256, description="= n_heads: MHA; 1: MQA; in between: GQA")
    d_ff: int = Field(512, ge=4, le=131072)
    activation: Activation = "swiglu"
    norm: Norm = "rmsnorm"
    pos: Positions = "rope"
    tie_embeddings: bool = True
    vocab_size: int = Field(256, ge=2, le=1_048_576)
    context_length: int = Field(256, ge=8, le=131072)
    rope_theta: float = Field(10000.0, gt=0, le=1e9)  # finite: JSON admits Infinity
    norm_eps: float = Field(1e-5, gt=0, lt=1)
    head_size: int | None = Field(
        None,
        ge=2,
        le=1024,
        description="explicit size of one attention head; default "
        "d_model / n_heads. Set when heads are pruned away: the survivors keep their size",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> ArchConfig:
        if self.head_size is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) "
                "(MHA: equal, GQA: a divisor, MQA: 1)"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head size, got {self.head_dim}")
        return self

    @property
    def head_dim(self) -> int:
        return self.head_size if self.head_size is not None else self.d_model // self.n_heads

    @property
    def is_llama_family(self) -> bool:
        """RMSNorm + SwiGLU + RoPE: the shape Hugging Face's Llama classes can hold exactly."""
        return self.norm == "rmsnorm" and self.activation == "swiglu" and self.pos == "rope"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "arch") -> ArchConfig:
        """Parse and validate; any problem is a one-line :class:`UserError`."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise UserError(describe_validation_error(err, source)) from None

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"arch file not found: {p}")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read arch file {p}: {err}") from None
        return cls.from_json(text, source=str(p))

    def short_hash(self) -> str:
        """Stable 10-hex-digit id of the shape (same JSON, same id, on every machine)."""
        # head_size joined the config later: left out while unset, so every earlier shape keeps its id
        canon = json.dumps(self.model_dump(exclude={"head_size"} if self.head_size is None else None), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:10]

    def describe(self) -> str:
        attn = "MHA" if self.n_kv_heads == self.n_heads else ("MQA" if self.n_kv_heads == 1 else "GQA")
        return (
            f"L{self.n_layers} d{self.d_model} h{self.n_heads}/{self.n_kv_heads}{attn}"
            + (f"x{self.head_size}" if self.head_size is not None else "")
            + f" ff{self.d_ff} "
            f"{self.activation} {self.norm} {self.pos} V{self.vocab_size} ctx{self.context_length}"
            + (" tied" if self.tie_embeddings else "")
        )


# --------------------------------------------------------------------------------------------------
# Constraints


class ArchConstraints(BaseModel):
    """Hard limits checked before an architecture costs any training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_params: int | None = Field(None, gt=0)
    max_non_embedding_params: int | None = Field(None, gt=0)
    max_bytes: int | None = Field(None, gt=0)
    bytes_dtype: Literal["fp32", "fp16", "bf16", "int8"] = "int8"

    def violations(self, arch: ArchConfig) -> list[str]:
        """Human-readable reasons ``arch`` breaks the limits (empty when it fits)."""
        out: list[str] = []
        c = count_params(arch)
        if self.max_params is not None and c.total > self.max_params:
            out.append(f"{c.total:,} parameters > max {self.max_params:,}")
        if self.max_non_embedding_params is not None and c.non_embedding > self.max_non_embedding_params:
            out.append(f"{c.non_embedding:,} non-embedding parameters > max {self.max_non_embedding_params:,}")
        if self.max_bytes is not None:
            b = size_bytes(arch, self.bytes_dtype)
            if b > self.max_bytes:
                out.append(f"{b:,} bytes at {self.bytes_dtype} > max {self.max_bytes:,}")
        return out

    def allows(self, arch: ArchConfig) -> bool:
        return not self.violations(arch)


# --------------------------------------------------------------------------------------------------
# The space


class SearchSpace(BaseModel):
    """Choices per gene. Each gene decodes into ArchConfig fields with a repair step, so any
    combination (sampled, mutated or crossed) is a valid architecture."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_layers: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12)
    d_model: tuple[int, ...] = (64, 96, 128, 160, 192, 256, 320, 384, 512)
    head_dim: tuple[int, ...] = (16, 32, 64)
    kv_ratio: tuple[int, ...] = (1, 2, 4)  # n_heads / n_kv_heads
    ffn_mult: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
    activation: tuple[Activation, ...] = ("swiglu", "gelu")
    norm: tuple[Norm, ...] = ("rmsnorm", "layernorm")
    pos: tuple[Positions, ...] = ("rope", "learned")
    tie_embeddings: tuple[bool, ...] = (True, False)
    vocab_size: tuple[int, ...] = (256,)
    context_length: tuple[int, ...] = (256,)

    @model_validator(mode="after")
    def _non_empty(self) -> SearchSpace:
        for name in GENES:
            if not getattr(self, name):
                raise ValueError(f"search space gene {name!r} has no choices")
        return self

    # -- genes <-> configs ------------------------------------------------------------------------

    def decode(self, genes: Mapping[str, Any]) -> ArchConfig:
        """Turn a full gene assignment into a valid ArchConfig (repairing head and KV counts).

        The values are typed Any: each gene has its own type (int, float, str or bool, from optuna or JSON), and
        ArchConfig's validation is what checks them."""
        d_model = int(genes["d_model"])
        head_dim = _largest_divisor_choice(d_model, [int(h) for h in self.head_dim], int(genes["head_dim"]))
        if head_dim is None or head_dim % 2:
            head_dim = _even_divisor_near(d_model, int(genes["head_dim"]))
        n_heads = d_model // head_dim
        ratio = _largest_divisor_choice(n_heads, [int(r) for r in self.kv_ratio], int(genes["kv_ratio"])) or 1
        d_ff = max(16, int(round(float(genes["ffn_mult"]) * d_model / 16)) * 16)
        return ArchConfig(
            n_layers=int(genes["n_layers"]),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_heads // ratio,
            d_ff=d_ff,
            activation=genes["activation"],
            norm=genes["norm"],
            pos=genes["pos"],
            tie_embeddings=bool(genes["tie_embeddings"]),
            vocab_size=int(genes["vocab_size"]),
            context_length=int(genes["context_length"]),
        )

    def encode(self, arch: ArchConfig) -> dict[str, object]:
        """Genes of any ArchConfig (numeric genes snap to the nearest choice of this space)."""
        raw = {
            "n_layers": arch.n_layers,
            "d_model": arch.d_model,
            "head_dim": arch.head_dim,
            "kv_ratio": arch.n_heads // arch.n_kv_heads,
            "ffn_mult": arch.d_ff / arch.d_model,
            "activation": arch.activation,
            "norm": arch.norm,
            "pos": arch.pos,
            "tie_embeddings": arch.tie_embeddings,
            "vocab_size": arch.vocab_size,
            "context_length": arch.context_length,
        }
        return {name: _nearest(getattr(self, name), value) for name, value in raw.items()}

    # -- sampling and variation ---------------------------------------------------------------------

    def sample(self, rng: random.Random) -> ArchConfig:
        return self.decode({name: rng.choice(getattr(self, name)) for name in GENES})

    def mutate(self, arch: ArchConfig, rng: random.Random, n_genes: int = 1) -> ArchConfig:
        """Change ``n_genes`` genes; ordered genes move to a neighbouring choice, so a mutation is a
        small step. Returns a config different from ``arch`` whenever the space allows one."""
        base = self.encode(arch)
        movable = [g for g in GENES if len(getattr(self, g)) > 1]
        if not movable:
            return self.decode(base)
        for _ in range(32):
            genes = dict(base)
            for name in rng.sample(movable, min(n_genes, len(movable))):
                genes[name] = _step(getattr(self, name), genes[name], rng, ordered=name in ORDERED_GENES)
            child = self.decode(genes)
            if child != arch:
                return child
        return child

    def crossover(self, a: ArchConfig, b: ArchConfig, rng: random.Random) -> ArchConfig:
        """Uniform crossover over genes (each gene from either parent with probability 1/2)."""
        ga, gb = self.encode(a), self.encode(b)
        return self.decode({name: (ga if rng.random() < 0.5 else gb)[name] for name in GENES})

    def sample_feasible(self, rng: random.Random, constraints: ArchConstraints, max_tries: int = 2000) -> ArchConfig:
        """Rejection-sample an architecture that meets ``constraints``."""
        for _ in range(max_tries):
            arch = self.sample(rng)
            if constraints.allows(arch):
                return arch
        smallest = self.smallest()
        raise UserError(
            "no architecture in the search space fits the constraints "
            f"(the smallest, {smallest.describe()}, breaks: {'; '.join(constraints.violations(smallest))})"
            if not constraints.allows(smallest)
            else f"only rare architectures fit the constraints: {max_tries} draws found none"
        )

    def smallest(self) -> ArchConfig:
        """The fewest-parameter corner of the space (used to tell impossible constraints apart)."""
        genes = {name: min(getattr(self, name)) if name in ORDERED_GENES else getattr(self, name)[0] for name in GENES}
        genes["tie_embeddings"] = True if True in self.tie_embeddings else self.tie_embeddings[0]
        genes["activation"] = "gelu" if "gelu" in self.activation else self.activation[0]
        genes["pos"] = "rope" if "rope" in self.pos else self.pos[0]
        genes["kv_ratio"] = max(self.kv_ratio)
        return self.decode(genes)

    def size(self) -> int:
        """Number of gene combinations (an upper bound on distinct architectures)."""
        n = 1
        for name in GENES:
            n *= len(getattr(self, name))
        return n


GENES: tuple[str, ...] = (
    "n_layers", "d_model", "head_dim", "kv_ratio", "ffn_mult", "activation",
    "norm", "pos", "tie_embeddings", "vocab_size", "context_length",
)  # fmt: skip
ORDERED_GENES = frozenset({"n_layers", "d_model", "head_dim", "kv_ratio", "ffn_mult", "vocab_size", "context_length"})

SPACES: dict[str, SearchSpace] = {
    "default": SearchSpace(),
    # Small enough that every member trains usefully in seconds on a laptop CPU (tests, smoke runs).
    "tiny": SearchSpace(
        n_layers=(1, 2, 3, 4),
        d_model=(32, 48, 64, 96),
        head_dim=(16, 32),
        kv_ratio=(1, 2),
        ffn_mult=(2.0, 3.0, 4.0),
        context_length=(64, 128),
    ),
}


def get_space(name: str) -> SearchSpace:
    """A named space, or a JSON file of gene choices."""
    if name in SPACES:
        return SPACES[name]
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        try:
            return SearchSpace.model_validate_json(p.read_text())
        except ValidationError as err:
            raise UserError(describe_validation_error(err, str(p))) from None
    raise UserError(f"unknown search space {name!r}: use one of {', '.join(SPACES)} or a .json file of gene choices")


# --------------------------------------------------------------------------------------------------
# helpers


def _nearest(choices: tuple, value: object) -> object:
    if value in choices:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numeric:
            return min(numeric, key=lambda c: (abs(float(c) - float(value)), c))
    return choices[0]


def _step(choices: tuple, current: object, rng: random.Random, ordered: bool) -> object:
    others = [c for c in choices if c != current]
    if not others:
        return current
    if ordered and current in choices:
        ranked = sorted(choices)
        i = ranked.index(current)
        neighbours = [ranked[j] for j in (i - 1, i + 1) if 0 <= j < len(ranked)]
        return rng.choice(neighbours)
    return rng.choice(others)


def _largest_divisor_choice(n: int, choices: list[int], preferred: int) -> int | None:
    """``preferred`` if it divides ``n``, else the choice nearest to it that does."""
    fits = [c for c in choices if c > 0 and n % c == 0]
    if not fits:
        return None
    return min(fits, key=lambda c: (abs(c - preferred), -c))


def _even_divisor_near(n: int, preferred: int) -> int:
    fits = [c for c in range(2, n + 1, 2) if n % c == 0]
    if not fits:
        return n  # odd d_model: a single head of full width (rope validation will reject if needed)
    return min(fits, key=lambda c: (abs(c - preferred), -c))
