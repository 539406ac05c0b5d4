"""Reading a finished training run folder (``arch.json``, ``model.safetensors``, ``tokenizer.json`` if BPE).

One loader for everything that consumes a trained model (HumanEval generation, a teacher for
distillation, compression), so the checks and the messages for a missing or corrupt folder are the same
everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_model

from harness.errors import UserError
from harness.model_code import carried_code_mismatch
from harness.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer_file
from nas.model import CodeLM, build_model
from nas.space import ArchConfig


def load_trained_model(run_dir: str | Path) -> tuple[CodeLM, Tokenizer]:
    """The model (fp32, eval mode, on CPU) and its tokenizer; a clear UserError for a bad folder."""
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"model folder {run_dir} does not exist")
    if not (d / "arch.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(f"{run_dir} is not a finished run (needs arch.json and model.safetensors)")
    mismatch = carried_code_mismatch(d)  # another network than this process's model code would build
    if mismatch:
        raise UserError(mismatch)
    try:
        arch = ArchConfig.from_json((d / "arch.json").read_text())
        model = build_model(arch)
        load_model(model, str(d / "model.safetensors"))
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot load the model in {run_dir} (corrupt?): {str(err).splitlines()[0][:200]}") from None
    tok_file = d / "tokenizer.json"
    tokenizer: Tokenizer = load_tokenizer_file(tok_file) if tok_file.is_file() else ByteTokenizer()
    if tokenizer.vocab_size != arch.vocab_size:
        raise UserError(f"{run_dir}: the model has {arch.vocab_size} tokens, its tokenizer {tokenizer.vocab_size}")
    return model.eval(), tokenizer


class OurModelSource:
    """A model trained by ``autonas train`` / search / distill: a run folder with arch.json + model.safetensors."""

    def __init__(self, run_dir: Path, device: str = "cpu"):
        run_dir = Path(run_dir)
        self.model, self.tokenizer = load_trained_model(run_dir)
        self.model.to(torch.device(device))
        self.name = f"autonas:{run_dir.name}"
        self.runtime = "torch_fp32"  # what decodes (kernels.runtimes' name): model.generate in fp32

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        ids = [self.tokenizer.eos_id, *self.tokenizer.encode(prompt)]
        out = []
        for i in range(n):
            gen = torch.Generator().manual_seed(seed + i)
            g = self.model.generate(
                ids,
                max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_id=self.tokenizer.eos_id,
                stop=stop,
                decode=self.tokenizer.decode,
                generator=gen,
            )
            out.append(g.text or "")
        return out
