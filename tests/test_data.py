import json
import os

import numpy as np
import pytest

from harness.data import CorpusSpec, load_documents, prepare_corpus, split_documents, stdlib_dir
from harness.errors import UserError
from harness.tokenizer import BPETokenizer, ByteTokenizer, parse_tokenizer_spec, train_bpe


def test_default_corpus_is_the_stdlib():
    docs = load_documents(CorpusSpec())
    keys = {d.key for d in docs}
    assert len(docs) > 500 and "json/decoder.py" in keys and "os.py" in keys
    assert not any("site-packages" in k for k in keys)
    parts = split_documents(docs, CorpusSpec())
    again = split_documents(load_documents(CorpusSpec()), CorpusSpec())
    assert {s: [d.key for d in v] for s, v in parts.items()} == {s: [d.key for d in v] for s, v in again.items()}
    sets = [set(d.key for d in parts[s]) for s in ("train", "val", "heldout")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert 0.02 < len(parts["val"]) / len(docs) < 0.09 and 0.02 < len(parts["heldout"]) / len(docs) < 0.09


def test_split_of_a_file_does_not_depend_on_the_rest(small_corpus_dir):
    docs = load_documents(CorpusSpec(source=str(small_corpus_dir), val_fraction=0.3, heldout_fraction=0.3))
    full = split_documents(docs, CorpusSpec(val_fraction=0.3, heldout_fraction=0.3))
    half = split_documents(docs[::2], CorpusSpec(val_fraction=0.3, heldout_fraction=0.3))
    where = {d.key: s for s, ds in full.items() for d in ds}
    for s, ds in half.items():
        for d in ds:
            assert where[d.key] == s


def test_byte_corpus_tokens_and_bytes(small_corpus_dir):
    spec = CorpusSpec(source=str(small_corpus_dir))
    c = prepare_corpus(spec, "byte")
    docs = split_documents(load_documents(spec), spec)
    expected = b"\x00".join(d.text.encode() for d in docs["val"]) + b"\x00"
    assert bytes(np.asarray(c["val"])) == expected
    assert c.text_bytes["val"] == len(expected) == int(c.token_bytes[np.asarray(c["val"])].sum())
    assert c["train"].dtype == np.uint8 and isinstance(c["train"], np.memmap)


def test_bpe_corpus_is_lossless_and_cached(small_corpus_dir):
    spec = CorpusSpec(source=str(small_corpus_dir))
    c = prepare_corpus(spec, "bpe:1024")
    assert isinstance(c.tokenizer, BPETokenizer) and c.vocab_size == 1024
    val = np.asarray(c["val"])
    assert c.text_bytes["val"] == int(c.token_bytes[val].sum())  # bytes per token are exact
    assert val.size < 0.6 * c.text_bytes["val"]  # BPE compresses code
    docs = split_documents(load_documents(spec), spec)["val"]
    first_doc = val[: int(np.argmax(val == c.tokenizer.eos_id))]
    assert c.tokenizer.decode(first_doc.tolist()) == docs[0].text
    stamp = {p.name: p.stat().st_mtime_ns for p in c.directory.iterdir()}
    again = prepare_corpus(spec, "bpe:1024")
    assert again.directory == c.directory
    assert {p.name: p.stat().st_mtime_ns for p in again.directory.iterdir()} == stamp  # reused, not rewritten


def test_datasets_formats(tmp_path):
    rows = [{"content": f"def f{i}(x):\n    return x * {i}\n" * 3, "lang": "py"} for i in range(30)]
    jsonl = tmp_path / "code.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    c = prepare_corpus(CorpusSpec(source=str(jsonl)), "byte")
    assert sum(c.documents.values()) == 30 and c.text_bytes["train"] > 0

    import datasets

    pq = tmp_path / "code.parquet"
    datasets.Dataset.from_list([{"code": r["content"]} for r in rows]).to_parquet(str(pq))
    c2 = prepare_corpus(CorpusSpec(source=str(pq)), "byte")
    assert sum(c2.text_bytes.values()) == sum(c.text_bytes.values())

    txt = tmp_path / "one.txt"
    txt.write_text("a\nb\n")
    with pytest.raises(UserError, match="at least 2 are needed"):
        prepare_corpus(CorpusSpec(source=str(txt)), "byte")  # a text file is one document

    with pytest.raises(UserError, match="no text column"):
        prepare_corpus(CorpusSpec(source=str(jsonl), text_field="body"), "byte")


@pytest.mark.parametrize("make", ["empty_dir", "empty_jsonl", "missing", "bad_suffix"])
def test_bad_corpora_are_clear_errors(tmp_path, make):
    if make == "empty_dir":
        (tmp_path / "d").mkdir()
        source, msg = tmp_path / "d", "is empty"
    elif make == "empty_jsonl":
        (tmp_path / "e.jsonl").write_text(json.dumps({"content": ""}) + "\n")
        source, msg = tmp_path / "e.jsonl", "is empty"
    elif make == "missing":
        source, msg = tmp_path / "nope.jsonl", "not found"
    else:
        (tmp_path / "x.csv2").write_text("a")
        source, msg = tmp_path / "x.csv2", "unsupported corpus file"
    with pytest.raises(UserError, match=msg):
        prepare_corpus(CorpusSpec(source=str(source)), "byte")


@pytest.mark.parametrize(
    "spec, expected",
    [("byte", ("byte", 256)), ("bpe:4096", ("bpe", 4096)), ("bpe8k", ("bpe", 8192)), ("BPE:512", ("bpe", 512))],
)
def test_tokenizer_specs(spec, expected):
    assert parse_tokenizer_spec(spec) == expected


@pytest.mark.parametrize("spec", ["sentencepiece", "bpe", "bpe:100", "byte:512", "bpe:99999999"])
def test_bad_tokenizer_specs(spec):
    with pytest.raises(UserError):
        parse_tokenizer_spec(spec)


def test_tokenizers_round_trip_unicode():
    text = "def grüß(x):  # ünïcödé ✓ 中文\n\treturn x\n"
    b = ByteTokenizer()
    assert b.decode(b.encode(text)) == text
    bpe = train_bpe([text * 20, "print('hello world')\n" * 20], 300)
    assert bpe.decode(bpe.encode(text)) == text
    assert int(bpe.token_bytes()[bpe.encode(text)].sum()) == len(text.encode())


def test_stdlib_dir_exists():
    assert (stdlib_dir() / "os.py").is_file()
    assert os.environ["AUTONAS_CACHE"]  # tests never write the user's cache
