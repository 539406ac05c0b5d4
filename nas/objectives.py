"""Search objectives (all minimised) and the hard limits that reject an architecture before training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import UserError
from nas.counting import count_params, size_bytes
from nas.space import ArchConfig


@dataclass(frozen=True)
class Objective:
    name: str
    metric: str  # key in metrics.json
    label: str
    known_before_training: bool  # computed from the ArchConfig alone


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("bpb", "val_bpb", "val bits per byte", False),
        Objective("bytes_int8", "size_bytes_int8", "size int8 (bytes)", True),
        Objective("bytes_fp16", "size_bytes_fp16", "size fp16 (bytes)", True),
        Objective("params", "params", "parameters", True),
        Objective("latency", "latency_ms_p50", "decode latency p50 (ms/token)", False),
    )
}


def parse_objectives(text: str) -> list[Objective]:
    """``bpb,bytes_int8`` -> objectives; unknown or repeated names are a one-line error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("no objectives given: use e.g. --objectives bpb,bytes_int8")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UserError(f"unknown objective {unknown[0]!r}: choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise UserError(f"objective listed twice in {text!r}")
    if "bpb" not in names:
        raise UserError("the objectives must include bpb (quality); add size or latency next to it")
    return [OBJECTIVES[n] for n in names]


class SearchLimits(BaseModel):
    """Hard limits. Size limits are checked from the config alone; latency on the untrained model,
    which decodes exactly as fast as the trained one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_mb: float | None = Field(None, gt=0, description="max size in MB (10^6 bytes) at bytes_dtype")
    bytes_dtype: Literal["int8", "fp16", "fp32"] = "int8"
    max_params: int | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)

    def size_violations(self, arch: ArchConfig) -> dict[str, float]:
        """Constraint values (> 0 means violated, in relative terms) for the static limits."""
        out: dict[str, float] = {}
        if self.max_mb is not None:
            out["size"] = size_bytes(arch, self.bytes_dtype) / (self.max_mb * 1e6) - 1.0
        if self.max_params is not None:
            out["params"] = count_params(arch).total / self.max_params - 1.0
        return out

    def latency_violation(self, latency_ms: float) -> float:
        return latency_ms / self.max_latency_ms - 1.0 if self.max_latency_ms is not None else -1.0
