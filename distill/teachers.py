"""Local teachers: a Hugging Face causal LM, or a larger model we trained ourselves.

Both give full next-token logits over a vocabulary that the student must share for token-level KD, and
both name the tokenizer file the student's corpus is tokenized with, so the ids mean the same tokens on
both sides. API teachers live in :mod:`distill.api_teacher` (they give text, and at most top-20
log-probabilities).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import torch

from harness.errors import UserError
from harness.tokenizer import load_tokenizer_file


class Teacher(Protocol):
    """A model whose logits the student learns from."""

    name: str
    vocab_size: int  # the tokenizer's vocabulary: the student's vocab_size for exact KD
    context_length: int
    tokenizer_spec: str  # what harness.data.prepare_corpus takes: "byte" or "file:<tokenizer.json>"
    tokenizer_fingerprint: str
    fingerprint: str  # identifies the weights (for the top-k logit cache)

    def to(self, device: torch.device) -> Teacher: ...
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor: ...


class CodeLMTeacher:
    """A run folder written by ``autonas train`` (arch.json, model.safetensors, tokenizer.json if BPE)."""

    def __init__(self, run_dir: str | Path):
        from nas.run_folder import load_trained_model

        d = Path(run_dir).expanduser()
        self.model, tok = load_trained_model(d)
        arch = self.model.arch
        tok_file = d / "tokenizer.json"
        self.tokenizer_spec = f"file:{tok_file.resolve()}" if tok_file.is_file() else "byte"
        self.tokenizer_fingerprint, self.vocab_size = tok.fingerprint(), tok.vocab_size
        self.context_length = arch.context_length
        self.arch = arch
        self.name = f"autonas:{d.resolve().name}"
        self.fingerprint = _files_fingerprint([d / "model.safetensors", d / "arch.json"])
        self.params = sum(p.numel() for p in self.model.parameters())

    def to(self, device: torch.device) -> CodeLMTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


class HFTeacher:
    """``AutoModelForCausalLM.from_pretrained(path_or_id)``; its ``tokenizer.json`` becomes the student's."""

    def __init__(self, path_or_id: str):
        from harness.data import cache_root
        from nas.hf import load_hf_causal_lm

        self.model, hf_tok = load_hf_causal_lm(path_or_id)
        backend = getattr(hf_tok, "backend_tokenizer", None)
        if backend is None:
            raise UserError(
                f"{path_or_id}: the teacher's tokenizer is not a fast (tokenizers) tokenizer; "
                "token-level KD needs its tokenizer.json"
            )
        text = backend.to_str()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        tok_file = cache_root() / "tokenizers" / f"teacher-{digest}.json"
        if not tok_file.is_file():
            tok_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = tok_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(tok_file)
        tok = load_tokenizer_file(tok_file)
        self.tokenizer_spec, self.tokenizer_fingerprint = f"file:{tok_file}", tok.fingerprint()
        self.vocab_size = tok.vocab_size
        self.logit_size = int(self.model.config.vocab_size)
        if self.logit_size < self.vocab_size:
            raise UserError(
                f"{path_or_id}: the model has {self.logit_size} logits but its tokenizer {self.vocab_size} tokens"
            )
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.name = f"hf:{path_or_id}"
        folder = Path(getattr(self.model, "name_or_path", "") or path_or_id)
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]
        self.fingerprint = (
            _files_fingerprint([w for w in weights if w.is_file()])
            if folder.is_dir()
            else hashlib.sha256(path_or_id.encode()).hexdigest()[:16]
        )
        self.params = sum(p.numel() for p in self.model.parameters())

    def to(self, device: torch.device) -> HFTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids).logits
        return out[..., : self.vocab_size]  # padded embedding rows stand for no token


def _files_fingerprint(paths: list[Path]) -> str:
    """A content hash of the teacher's weight files (read once; teachers here are small enough)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_teacher(spec: str) -> Teacher:
    """``hf:PATH_OR_ID``, or a run folder of ours (``autonas train`` output), or an HF model folder."""
    if spec.startswith(("openai:", "anthropic:")):
        raise UserError(f"{spec} is an API teacher: it gives text, not logits; use --loss seq (sequence-level KD)")
    if spec.startswith("hf:"):
        return HFTeacher(spec[3:])
    p = Path(spec).expanduser()
    if (p / "arch.json").is_file():
        return CodeLMTeacher(p)
    if (p / "config.json").is_file():
        return HFTeacher(str(p))
    if not p.exists():
        raise UserError(
            f"teacher {spec} does not exist"
            " (a run folder, a Hugging Face folder, hf:<id>, openai:<model> or anthropic:<model>)"
        )
    raise UserError(f"{spec} is neither a training run (arch.json) nor a Hugging Face model folder (config.json)")
