"""Tokenizers: raw bytes (256 symbols) and byte-level BPE trained with Hugging Face ``tokenizers``.

Both are lossless over UTF-8 and both know how many bytes of text each token stands for, which is what
bits per byte needs to compare models across tokenizers. The document separator is a real token in both:
byte 0 (NUL, which does not occur in source code) for the byte tokenizer, ``<|endoftext|>`` for BPE; it
counts as one byte of text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from harness.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

EOS_TOKEN = "<|endoftext|>"
# Document separators of other tokenizers a teacher may bring (GPT-2/StarCoder, Llama 2, Llama 3, Gemma).
OTHER_EOS_TOKENS = ("</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def token_bytes(self) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens. Vocab 256; NUL doubles as the document separator."""

    name = "byte"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 < int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int32)

    def fingerprint(self) -> str:
        return "byte"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character table, which ByteLevel BPE uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class BPETokenizer:
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) with a known byte length per token."""

    def __init__(self, tok, path: Path | None = None):  # tok: tokenizers.Tokenizer
        self._tok = tok
        self.path = path
        self.vocab_size = tok.get_vocab_size()
        eos = next((tok.token_to_id(t) for t in (EOS_TOKEN, *OTHER_EOS_TOKENS) if tok.token_to_id(t) is not None), None)
        if eos is None:
            raise UserError(f"tokenizer has no document separator ({EOS_TOKEN} or {', '.join(OTHER_EOS_TOKENS)})")
        self.eos_id = int(eos)
        self.name = f"bpe{self.vocab_size}"

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer  # only for BPE: the byte tokenizer needs none of it

        p = Path(path)
        try:
            return cls(HFTokenizer.from_file(str(p)), p)
        except Exception as err:  # tokenizers raises plain Exception on bad JSON
            raise UserError(f"cannot load tokenizer {p}: {err}") from None

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        """Bytes of text per token: byte-level BPE symbols, SentencePiece pieces (``▁`` is a space,
        ``<0xNN>`` one byte); special tokens other than the separator stand for no text."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        for token, idx in self._tok.get_vocab(with_added_tokens=True).items():
            if idx == self.eos_id:
                out[idx] = 1
            elif token in special:
                out[idx] = 0  # never produced by encode on plain text
            elif all(ch in _UNICODE_TO_BYTE for ch in token):
                out[idx] = len(token)
            elif _BYTE_FALLBACK.match(token):
                out[idx] = 1
            else:
                out[idx] = len(token.replace("\u2581", " ").encode("utf-8"))
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (256 byte symbols + merges + EOS)."""
    from tokenizers import Tokenizer as HFTokenizer  # only for BPE, as in BPETokenizer.load
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise UserError(f"a BPE vocabulary needs more than the 256 byte symbols, got {vocab_size}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


_SPEC = re.compile(r"^(byte|bpe)(?::?(\d+)(k?))?$")


def parse_tokenizer_spec(spec: str) -> tuple[str, int]:
    """``byte`` -> ("byte", 256); ``bpe:4096`` / ``bpe4k`` -> ("bpe", 4096); ``file:PATH`` -> ("file", its size).

    ``file:`` names a ``tokenizer.json`` (or a folder holding one), e.g. a teacher's, so a student
    shares its vocabulary exactly.
    """
    named_file = tokenizer_file(spec)
    if named_file is not None:
        return "file", BPETokenizer.load(named_file).vocab_size
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise UserError(f"unknown tokenizer {spec!r}: use 'byte' or 'bpe:<vocab size>' (e.g. bpe:4096, bpe8k)")
    kind, num, k = m.groups()
    if kind == "byte":
        if num:
            raise UserError(f"the byte tokenizer has a fixed vocabulary of 256: {spec!r}")
        return "byte", 256
    if not num:
        raise UserError(f"BPE needs a vocabulary size: {spec!r} (e.g. bpe:4096)")
    size = int(num) * (1024 if k else 1)
    if size < 257 or size > 65535:
        raise UserError(f"BPE vocabulary size must be between 257 and 65535, got {size}")
    return "bpe", size


def _tokenizer_path(path: str | Path) -> Path:
    """A ``tokenizer.json``, or the one inside a folder (a run folder or a Hugging Face model folder)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"no tokenizer file at {p}")
    return p


def tokenizer_file(spec: str) -> Path | None:
    """The file a ``file:PATH`` tokenizer spec names; None for ``byte`` / ``bpe`` specs."""
    s = spec.strip()
    return _tokenizer_path(s[len("file:") :]) if s.startswith("file:") else None


def load_tokenizer_file(path: str | Path) -> BPETokenizer:
    return BPETokenizer.load(_tokenizer_path(path))


def byte_level_symbols() -> list[str]:
    """The byte tokenizer's 256 tokens as text, in id order: GPT-2's printable stand-in for byte i at index i.

    This is the spelling byte-level BPE vocabularies use, so the byte tokenizer exports as a BPE with no merges
    (for ``transformers``, CTranslate2 and llama.cpp alike) and its ids stay the byte values.
    """
    table = _bytes_to_unicode()
    return [table[b] for b in range(256)]


def hf_backend(tokenizer: Tokenizer) -> HFTokenizer:
    """A ``tokenizers.Tokenizer`` that encodes text to exactly ``tokenizer``'s ids and decodes them back.

    BPE: a copy of the trained tokenizer. Byte: a byte-level BPE over :func:`byte_level_symbols` with no merges,
    so every byte is its own token and id i is byte i (NUL, the separator, included). Anything else has no
    exact backend and is refused.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tokenizer, BPETokenizer):
        return HFTokenizer.from_str(tokenizer._tok.to_str())
    if isinstance(tokenizer, ByteTokenizer):
        vocab = {symbol: i for i, symbol in enumerate(byte_level_symbols())}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    raise UserError(f"no Hugging Face tokenizer for {tokenizer.name!r}: only the byte and BPE tokenizers export")
