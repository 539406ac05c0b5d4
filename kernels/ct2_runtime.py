"""CTranslate2 as a deployment runtime: the Hugging Face Llama export converted by CTranslate2's own converter.

CTranslate2 speaks token *strings*: the converted folder's ``vocabulary.json`` lists them in id order, so our ids
map to strings by position and back through the ids the generator returns. Greedy decoding is ``generate_batch``
with ``sampling_topk=1`` and ``end_token=[]`` (no stop token, so every runtime decodes the same number of tokens);
scores come from ``score_batch`` (the log-probability of each token after the first, given its prefix).
ctranslate2 is an optional extra: without it (or without a tokenizer in ``hf/``, which the converter reads for
the vocabulary) the runtime is reported unavailable with the reason, never as an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.errors import UserError
from kernels.runtimes import Latency, Runtime, percentiles

# our precision suffix -> CTranslate2's quantization (the last two run on CUDA only)
QUANTIZATION = {"fp32": "float32", "int8": "int8", "fp16": "float16", "int8_fp16": "int8_float16"}
VOCABULARY = "vocabulary.json"


def available() -> str | None:
    """None when ctranslate2 can be imported, else why not (one line)."""
    try:
        import ctranslate2  # noqa: F401  (optional: the 'kernels' extra)
    except ImportError:
        return "ctranslate2 is not installed: pip install 'autonas-codelm[kernels]'"
    return None


def convert(hf_dir: Path, out: Path, precision: str) -> Path | str:
    """``hf_dir`` converted into ``out`` at ``precision`` (a key of ``QUANTIZATION``), reused when ``out`` already
    holds a conversion; or the reason it cannot be converted."""
    if precision not in QUANTIZATION:
        raise UserError(f"unknown CTranslate2 precision {precision!r}: use {', '.join(QUANTIZATION)}")
    missing = available()
    if missing:
        return missing
    if (out / "model.bin").is_file() and (out / VOCABULARY).is_file():
        return out
    if not (hf_dir / "tokenizer.json").is_file() and not (hf_dir / "tokenizer_config.json").is_file():
        return f"{hf_dir} has no tokenizer (CTranslate2's converter reads its vocabulary from it)"
    import ctranslate2  # optional (the 'kernels' extra): imported where it is used, after available() said yes

    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
        str(out), quantization=QUANTIZATION[precision], force=True
    )
    return out


class Ct2Runtime(Runtime):
    """A ``ctranslate2.Generator`` over a converted folder, on ``device`` (cpu or cuda)."""

    def __init__(self, name: str, path: Path, threads: int, device: str = "cpu"):
        import ctranslate2  # optional (the 'kernels' extra): only a CTranslate2 runtime needs it

        self.name, self.threads, self.device = name, threads, device
        self.generator = ctranslate2.Generator(str(path), device=device, intra_threads=threads)
        self.vocab: list[str] = json.loads((Path(path) / VOCABULARY).read_text())

    def _strings(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def greedy(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        (result,) = self.generator.generate_batch(
            [self._strings(prompt)],
            max_length=new_tokens,
            sampling_topk=1,
            beam_size=1,
            end_token=[],
            include_prompt_in_result=False,
        )
        return [int(i) for i in result.sequences_ids[0]]

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        (result,) = self.generator.score_batch([self._strings(tokens)], max_input_length=len(tokens))
        return -np.asarray(result.log_probs, dtype=np.float64)

    def decode_ms(self, prompt_tokens: int = 32, decode_tokens: int = 128, repeats: int = 3) -> Latency:
        """Per repeat, the time of prompt + ``decode_tokens`` tokens less the time of prompt + 1 token, over the
        ``decode_tokens - 1`` tokens between (so the prefill is not counted); one warm-up repeat.

        ``generate_tokens`` streams tokens from a worker thread in bursts, so the gaps between streamed tokens
        are not per-token times; the difference of two whole generations is."""
        prompt = [self._strings(np.random.default_rng(0).integers(0, len(self.vocab), prompt_tokens))]
        kw = {"sampling_topk": 1, "beam_size": 1, "end_token": [], "include_prompt_in_result": False}
        per_token: list[float] = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            self.generator.generate_batch(prompt, max_length=1, **kw)
            t1 = time.perf_counter()
            self.generator.generate_batch(prompt, max_length=decode_tokens, **kw)
            t2 = time.perf_counter()
            if r > 0:
                per_token.append(max(0.0, (t2 - t1) - (t1 - t0)) * 1e3 / (decode_tokens - 1))
        return percentiles(per_token)
