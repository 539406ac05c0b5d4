"""Quality check: val bits per byte of a ~1M-parameter model after 2 minutes of CPU training.

Trains the default ArchConfig (4 layers x 128, byte-level, ~1.1M parameters) on the default corpus for
``--budget`` (120 s of training) and evaluates on the first 256 KiB of the validation split. A model that
learned nothing scores 8 (uniform over bytes); the untrained model is scored too, for comparison.

    python benchmarks/quality_2min.py [--budget 120s] [--tokenizer byte]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import report

from harness.budget import parse_budget
from harness.data import prepare_corpus
from harness.metrics import evaluate_bpb
from harness.tokenizer import parse_tokenizer_spec
from nas.model import build_model
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer, prepare_run_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="120s")
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    corpus = prepare_corpus(tokenizer=args.tokenizer)
    arch = ArchConfig(vocab_size=parse_tokenizer_spec(args.tokenizer)[1])
    init_bpb = evaluate_bpb(build_model(arch, seed=0), corpus["val"], corpus.token_bytes).bpb
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        prepare_run_dir(out)
        cfg = TrainConfig.from_budget(parse_budget(args.budget), lr=args.lr, device="cpu")
        m = Trainer(arch, corpus, cfg, out, tokenizer_name=args.tokenizer, log_to_console=True).run().metrics
    report(
        f"quality_2min_{args.tokenizer.replace(':', '')}",
        f"{arch.describe()} after {args.budget} of CPU training",
        [
            {
                "tokenizer": args.tokenizer,
                "params": m["params"],
                "train_s": m["train_s"],
                "steps": m["steps"],
                "tokens_trained": m["tokens_trained"],
                "init_val_bpb": init_bpb,
                "val_bpb": m["val_bpb"],
                "val_bytes": m["val_bytes"],
                "latency_ms_p50": m["latency_ms_p50"],
            }
        ],
    )


if __name__ == "__main__":
    main()
