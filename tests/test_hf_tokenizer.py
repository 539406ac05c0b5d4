"""The tokenizer in every exported ``hf/`` folder: ``AutoTokenizer`` loads it, encodes text to exactly our ids (no
bos/eos added) and decodes them back, for the byte tokenizer and for a trained BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.errors import UserError
from harness.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, byte_level_symbols
from nas.hf import export_hf
from nas.model import build_model
from nas.space import ArchConfig

# Code with what tokenizers get wrong: leading spaces and tabs, blank lines, runs of spaces, accents, a symbol,
# an emoji (4 UTF-8 bytes), "Ā" (the byte tokenizer's stand-in for NUL, a real letter) and a trailing newline.
CODE = (
    "def área(r: float) -> float:\n"
    '    """π r² — the disc\'s area."""\n'
    "\treturn 3.14159 * r  *  r\n"
    "\n\n"
    "  x = 'Ā ∑ 🐍'   # trailing spaces   \n"
    "class  K :\n\t\tpass\n"
)


@pytest.fixture()
def bpe(small_corpus_bpe: BPETokenizer) -> BPETokenizer:
    return small_corpus_bpe


def _export(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    arch = ArchConfig(
        n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, vocab_size=tokenizer.vocab_size, context_length=48
    )
    return export_hf(build_model(arch), tmp_path / "hf", tokenizer)


def _round_trip(hf_dir: Path, ours: Tokenizer, text: str) -> None:
    hf = AutoTokenizer.from_pretrained(hf_dir)
    ids = ours.encode(text)
    assert hf(text)["input_ids"] == ids  # add_special_tokens defaults to True: still no bos/eos added
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == text == ours.decode(ids)
    assert hf.eos_token_id == hf.bos_token_id == hf.pad_token_id == ours.eos_id
    assert len(hf) == ours.vocab_size


def test_byte_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path) -> None:
    ours = ByteTokenizer()
    hf_dir = _export(tmp_path, ours)
    _round_trip(hf_dir, ours, CODE)
    hf = AutoTokenizer.from_pretrained(hf_dir)
    assert hf.convert_ids_to_tokens(list(range(256))) == byte_level_symbols()  # id i is byte i
    assert len(set(byte_level_symbols())) == 256
    # the separator between documents encodes as id 0 (NUL), and decoding drops it as ours does
    two_docs = [0, *ours.encode("a = 1\n"), 0, *ours.encode("b\té\n")]
    assert hf.encode("\x00a = 1\n\x00b\té\n") == two_docs
    assert hf.decode(two_docs, skip_special_tokens=True) == ours.decode(two_docs) == "a = 1\nb\té\n"
    # bytes that are not UTF-8 on their own decode to the replacement character in both
    assert hf.decode([0xE2, 0x88]) == ours.decode([0xE2, 0x88])
    assert hf.model_max_length == 48
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_bpe_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path, bpe: BPETokenizer) -> None:
    hf_dir = _export(tmp_path, bpe)
    _round_trip(hf_dir, bpe, CODE)
    ids = bpe.encode(CODE)
    assert len(ids) < len(CODE.encode()) * 0.8  # merges were used: this is not the byte tokenizer in disguise
    hf = AutoTokenizer.from_pretrained(hf_dir)
    assert hf.convert_ids_to_tokens(bpe.eos_id) == "<|endoftext|>"
    assert hf.encode("x<|endoftext|>y") == bpe.encode("x<|endoftext|>y")  # the separator as ours encodes it


def test_every_corpus_file_round_trips(tmp_path: Path, small_corpus_dir: Path, bpe: BPETokenizer) -> None:
    """Whole real files, both tokenizers: the same ids and the same text back."""
    byte_hf = AutoTokenizer.from_pretrained(_export(tmp_path / "byte", ByteTokenizer()))
    bpe_hf = AutoTokenizer.from_pretrained(_export(tmp_path / "bpe", bpe))
    files = sorted(small_corpus_dir.rglob("*.py"))[:6]
    assert files
    for path in files:
        text = path.read_text()
        for hf, ours in ((byte_hf, ByteTokenizer()), (bpe_hf, bpe)):
            ids = hf.encode(text)
            assert ids == ours.encode(text), path.name
            assert hf.decode(ids) == text, path.name


def test_a_tokenizer_of_another_size_is_refused(tmp_path: Path, bpe: BPETokenizer) -> None:
    arch = ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=32)  # 256 tokens
    with pytest.raises(UserError, match="256 tokens"):
        export_hf(build_model(arch), tmp_path / "hf", bpe)
    assert not (tmp_path / "hf").exists()
