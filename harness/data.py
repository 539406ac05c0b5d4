"""Corpora, deterministic splits, and tokenized data cached on disk as memory-mapped arrays.

The default corpus is the ``.py`` files of the running interpreter's standard library, found through
``sysconfig`` so it exists on every machine without a download. Any other corpus comes through
``datasets``: a local JSONL / JSON / Parquet / text file, a folder of source files, or a hub name.

Documents are split by a hash of their key (relative path, or content for data sets) into train, val and
a locked held-out split: the held-out files are never trained on or used for selection; only a final
report reads them. Tokenized splits are cached under ``$AUTONAS_CACHE`` (default ``~/.cache/autonas``),
keyed by a fingerprint of the corpus and the tokenizer, and reused by every later run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import UserError
from harness.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer_file,
    parse_tokenizer_spec,
    tokenizer_file,
    train_bpe,
)

Split = Literal["train", "val", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "val", "heldout")
CODE_SUFFIXES = (".py",)


class CorpusSpec(BaseModel):
    """Where the text comes from and how it is split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field("stdlib", description="'stdlib', a local file/folder, or a datasets hub name")
    text_field: str | None = Field(None, description="column holding the text (auto: content, text, code)")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5)
    max_docs: int | None = Field(None, gt=0, description="keep only this many documents (by key order)")
    max_doc_bytes: int = Field(1_000_000, gt=0, description="skip larger documents (generated tables)")


@dataclass(frozen=True)
class Document:
    key: str  # what the split hashes: a relative path, or the content hash
    text: str


def cache_root() -> Path:
    return Path(os.environ.get("AUTONAS_CACHE", Path.home() / ".cache" / "autonas"))


# --------------------------------------------------------------------------------------------------
# Loading documents


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    """Source files under ``root``, sorted; installed packages and caches are pruned, not walked."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(CODE_SUFFIXES))
    return sorted(files)


def _read_tree(root: Path, spec: CorpusSpec) -> list[Document]:
    docs = []
    for p in _source_files(root):
        try:
            raw = p.read_bytes()
        except OSError:
            continue
        if not raw or len(raw) > spec.max_doc_bytes:
            continue
        docs.append(Document(key=p.relative_to(root).as_posix(), text=raw.decode("utf-8", errors="replace")))
    return docs


def _dataset_builder(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    for builder, sfx in (
        ("json", (".jsonl", ".json", ".jsonl.gz", ".json.gz")),
        ("parquet", (".parquet",)),
        ("text", (".txt", ".txt.gz")),
    ):
        if suffix in sfx:
            return builder
    raise UserError(f"unsupported corpus file {path}: use .jsonl, .json, .parquet or .txt (or a folder of .py files)")


def _load_with_datasets(spec: CorpusSpec) -> list[Document]:
    import datasets  # slow to import (seconds): only for corpora that need it

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error lines would precede our one line
    path = Path(spec.source)
    try:
        if path.is_file():
            builder = _dataset_builder(path)
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        else:
            ds = datasets.load_dataset(spec.source, split="train")
    except UserError:
        raise
    except Exception as err:  # datasets raises many types for a missing / offline / malformed source
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load corpus {spec.source!r}: {first}") from None
    field = spec.text_field or next((c for c in ("content", "text", "code") if c in ds.column_names), None)
    if field is None or field not in ds.column_names:
        raise UserError(
            f"corpus {spec.source!r} has no text column {spec.text_field or '(content/text/code)'}; "
            f"columns: {', '.join(ds.column_names)}; choose one with --text-field"
        )
    docs = []
    for text in ds[field]:
        if not isinstance(text, str) or not text:
            continue
        if len(text.encode("utf-8")) > spec.max_doc_bytes:
            continue
        docs.append(Document(key=hashlib.sha256(text.encode("utf-8")).hexdigest(), text=text))
    return docs


def load_documents(spec: CorpusSpec) -> list[Document]:
    """All documents of the corpus, sorted by key (deterministic on every machine)."""
    if spec.source == "stdlib":
        docs = _read_tree(stdlib_dir(), spec)
    elif Path(spec.source).is_dir():
        docs = _read_tree(Path(spec.source), spec)
    elif Path(spec.source).exists() or not _looks_like_hub_name(spec.source):
        if not Path(spec.source).exists():
            raise UserError(f"corpus not found: {spec.source}")
        docs = _load_with_datasets(spec)
    else:
        docs = _load_with_datasets(spec)
    docs = sorted({d.key: d for d in docs}.values(), key=lambda d: d.key)
    if spec.max_docs is not None:
        docs = docs[: spec.max_docs]
    if not docs:
        raise UserError(f"corpus {spec.source!r} is empty: no non-empty documents found")
    return docs


def _looks_like_hub_name(source: str) -> bool:
    return "/" in source and not source.startswith((".", "/")) and source.count("/") == 1


def _bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def split_documents(docs: list[Document], spec: CorpusSpec) -> dict[Split, list[Document]]:
    """Split by a hash of each key: a file stays in its split as the corpus grows.

    A tiny corpus still gets one val document (and one held-out document from three on), taken from the
    train side by smallest hash, so evaluation never silently runs on nothing.
    """
    if len(docs) < 2:
        raise UserError(f"corpus {spec.source!r} has {len(docs)} document(s): at least 2 are needed (train and val)")
    out: dict[Split, list[Document]] = {"train": [], "val": [], "heldout": []}
    for d in docs:
        u = _bucket(d.key)
        split: Split = (
            "val"
            if u < spec.val_fraction
            else ("heldout" if u < spec.val_fraction + spec.heldout_fraction else "train")
        )
        out[split].append(d)
    wanted: list[Split] = ["val", "heldout"] if spec.heldout_fraction > 0 and len(docs) >= 3 else ["val"]
    for split in wanted:
        if not out[split] and len(out["train"]) > 1:
            pick = min(out["train"], key=lambda d: _bucket(d.key))
            out["train"].remove(pick)
            out[split].append(pick)
    return out


def corpus_fingerprint(spec: CorpusSpec, docs: list[Document]) -> str:
    h = hashlib.sha256(spec.model_dump_json().encode())
    if spec.source == "stdlib":
        h.update(sys.version.encode())
    for d in docs:
        h.update(d.key.encode())
        h.update(hashlib.sha256(d.text.encode("utf-8", errors="replace")).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Tokenized corpus


@dataclass
class TokenizedCorpus:
    """Token ids of each split as memory-mapped arrays, with bytes per token for bits-per-byte."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    token_bytes: np.ndarray
    directory: Path
    corpus_fingerprint: str
    documents: dict[str, int]
    text_bytes: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __getitem__(self, split: str) -> np.ndarray:
        return self.splits[split]


def _token_dtype(vocab_size: int) -> np.dtype:
    return (
        np.dtype(np.uint8)
        if vocab_size <= 256
        else (np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32))
    )


def tokenize_documents(tok: Tokenizer, docs: list[Document], dtype: np.dtype) -> np.ndarray:
    """Each document followed by the separator, concatenated."""
    if isinstance(tok, ByteTokenizer):
        sep = bytes([tok.eos_id])
        blob = sep.join(d.text.encode("utf-8") for d in docs) + sep
        return np.frombuffer(blob, dtype=np.uint8).astype(dtype, copy=False)
    parts: list[np.ndarray] = []
    eos = np.array([tok.eos_id], dtype=dtype)
    chunk = 256
    for i in range(0, len(docs), chunk):
        for ids in tok.encode_batch([d.text for d in docs[i : i + chunk]]):
            parts.append(np.asarray(ids, dtype=dtype))
            parts.append(eos)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _atomic_write_array(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    arr.tofile(tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def get_tokenizer(spec: str, train_docs: list[Document], corpus_fp: str) -> Tokenizer:
    """The tokenizer named by ``spec``; a BPE is trained on the train split once and cached."""
    kind, size = parse_tokenizer_spec(spec)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "file":
        named = tokenizer_file(spec)
        assert named is not None  # kind "file" is a file:PATH spec, which names a path
        return BPETokenizer.load(named)
    path = cache_root() / "tokenizers" / f"{corpus_fp}-bpe{size}.json"
    if path.is_file():
        return BPETokenizer.load(path)
    tok = train_bpe((d.text for d in train_docs), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(tmp)
    os.replace(tmp, path)
    return BPETokenizer.load(path)


def _source_signature(spec: CorpusSpec, tokenizer: str) -> str | None:
    """A cheap identity of a local corpus (names, sizes, mtimes) so a cached run skips reading it.

    None for hub data sets, which are always loaded (datasets keeps its own cache).
    """
    h = hashlib.sha256(f"{spec.model_dump_json()}|{tokenizer}".encode())
    named_file = tokenizer_file(tokenizer)
    if named_file is not None:  # a tokenizer file edited in place must not hit the old cache
        h.update(hashlib.sha256(named_file.read_bytes()).hexdigest().encode())
    path = Path(spec.source)
    if spec.source == "stdlib":
        root = stdlib_dir()
        h.update(sys.version.encode())
    elif path.is_dir():
        root = path
    elif path.is_file():
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:24]
    else:
        return None
    h.update(str(root.resolve()).encode())
    for p in _source_files(root):
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _load_tokenizer_file(kind: str, path: str | None) -> Tokenizer:
    return ByteTokenizer() if kind == "byte" else load_tokenizer_file(str(path))


def _open_tokenized(directory: Path, tok: Tokenizer, fp: str) -> TokenizedCorpus:
    meta = json.loads((directory / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    splits: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = meta["splits"][split]["tokens"]
        splits[split] = (
            np.memmap(directory / f"{split}.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
        )
    return TokenizedCorpus(
        tokenizer=tok,
        splits=splits,
        token_bytes=tok.token_bytes(),
        directory=directory,
        corpus_fingerprint=fp,
        documents={s: meta["splits"][s]["documents"] for s in SPLITS},
        text_bytes={s: meta["splits"][s]["text_bytes"] for s in SPLITS},
    )


def prepare_corpus(spec: CorpusSpec | None = None, tokenizer: str = "byte") -> TokenizedCorpus:
    """Load, split and tokenize a corpus, or reuse the cached arrays from an earlier call.

    A local corpus whose files are unchanged (same names, sizes and mtimes) is served from the cache
    without being read again, which keeps the start of every search trial short.
    """
    spec = spec or CorpusSpec()
    kind, _ = parse_tokenizer_spec(tokenizer)  # fail fast on a bad name, before reading any corpus
    signature = _source_signature(spec, tokenizer)
    index = cache_root() / "index" / f"{signature}.json" if signature else None
    if index is not None and index.is_file():
        try:
            entry = json.loads(index.read_text())
            directory = Path(entry["directory"])
            if (directory / "meta.json").is_file():
                return _open_tokenized(
                    directory, _load_tokenizer_file(kind, entry.get("tokenizer_path")), entry["corpus_fingerprint"]
                )
        except (ValueError, KeyError, OSError, UserError):
            pass  # a stale or damaged index entry: rebuild below
    docs = load_documents(spec)
    fp = corpus_fingerprint(spec, docs)
    parts = split_documents(docs, spec)
    tok = get_tokenizer(tokenizer, parts["train"], fp)
    directory = cache_root() / "tokens" / f"{fp}-{tok.fingerprint()}"
    meta_path = directory / "meta.json"
    dtype = _token_dtype(tok.vocab_size)
    if not meta_path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        split_meta: dict[str, dict[str, int]] = {}
        meta = {
            "tokenizer": tok.name,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "source": spec.source,
            "splits": split_meta,
        }
        for split in SPLITS:
            arr = tokenize_documents(tok, parts[split], dtype)
            _atomic_write_array(directory / f"{split}.bin", arr)
            split_meta[split] = {
                "tokens": int(arr.size),
                "documents": len(parts[split]),
                "text_bytes": int(sum(len(d.text.encode("utf-8")) + 1 for d in parts[split])),
            }
        _atomic_write_text(meta_path, json.dumps(meta, indent=2))
    if index is not None:
        index.parent.mkdir(parents=True, exist_ok=True)
        tok_path = getattr(tok, "path", None)
        _atomic_write_text(
            index,
            json.dumps(
                {
                    "directory": str(directory),
                    "corpus_fingerprint": fp,
                    "tokenizer_path": str(tok_path) if tok_path else None,
                }
            ),
        )
    return _open_tokenized(directory, tok, fp)
