"""Tokenizer training and tokenizing the default corpus (the standard library): seconds and tokens.

Runs in a fresh temporary cache so nothing is reused from earlier runs.

    python benchmarks/tokenizer_speed.py
"""

from __future__ import annotations

import time

import numpy as np
from _common import report

from harness.data import CorpusSpec, load_documents, split_documents, tokenize_documents
from harness.tokenizer import ByteTokenizer, train_bpe


def main() -> None:
    t0 = time.perf_counter()
    spec = CorpusSpec()
    docs = load_documents(spec)
    parts = split_documents(docs, spec)
    load_s = time.perf_counter() - t0
    all_docs = parts["train"] + parts["val"] + parts["heldout"]
    text_bytes = sum(len(d.text.encode()) + 1 for d in all_docs)
    rows = []
    for name in ("byte", "bpe:4096", "bpe:8192"):
        t1 = time.perf_counter()
        tok = (
            ByteTokenizer() if name == "byte" else train_bpe((d.text for d in parts["train"]), int(name.split(":")[1]))
        )
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        n = sum(int(tokenize_documents(tok, parts[s], np.dtype(np.uint16)).size) for s in ("train", "val", "heldout"))
        tok_s = time.perf_counter() - t2
        rows.append(
            {
                "tokenizer": name,
                "train_s": round(train_s, 2),
                "tokenize_s": round(tok_s, 2),
                "tokens": n,
                "bytes_per_token": round(text_bytes / n, 3),
                "MB_per_s": round(text_bytes / 1e6 / max(tok_s, 1e-9), 1),
            }
        )
    report(
        "tokenizer_speed",
        f"default corpus: {len(all_docs)} files, {text_bytes / 1e6:.1f} MB (loaded in {load_s:.1f} s)",
        rows,
        {"documents": len(all_docs), "text_bytes": text_bytes, "load_s": load_s},
    )


if __name__ == "__main__":
    main()
