"""The search's ``best/`` folder: each member of the final Pareto front as an architecture file, and as a Hugging
Face model folder when it can be exported exactly (Llama-family) and its trained weights are there.

Members are numbered best bpb first: ``best/00-<hash>.json`` is what ``metrics.json``'s ``best_arch_file`` names when
the front's best bpb is its first member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_model

from harness.tokenizer import Tokenizer
from nas.hf import export_blockers, export_hf
from nas.model import CodeLM
from nas.space import ArchConfig

BEST_DIR = "best"


def best_arch_file(out: Path, index: int, arch_hash: str) -> Path:
    return out / BEST_DIR / f"{index:02d}-{arch_hash}.json"


def export_front(
    out: Path, members: Sequence[tuple[ArchConfig, Path]], export_hf_folders: bool, tokenizer: Tokenizer
) -> None:
    """Write ``best/`` for the front's members, given as (architecture, trial folder) in front order."""
    best = out / BEST_DIR
    best.mkdir(exist_ok=True)
    for i, (arch, folder) in enumerate(members):
        best_arch_file(out, i, arch.short_hash()).write_text(arch.to_json())
        weights = folder / "model.safetensors"
        if export_hf_folders and not export_blockers(arch) and weights.is_file():
            model = CodeLM(arch)
            load_model(model, str(weights))
            export_hf(model, best / f"{i:02d}-{arch.short_hash()}-hf", tokenizer)
