"""KD gain on CPU: a student distilled from a teacher several times its size vs the same student trained
from scratch, at an equal token budget, on the default corpus (the interpreter's standard library).

1. Train the teacher (default: 4 x 128, ~0.9M parameters) for ``--teacher-budget``.
2. Train the student (default: 2 x 64) from scratch for ``--student-tokens`` tokens.
3. Distil the teacher into the same student, same seed, same tokens, once per loss (fkl, rkl, skl, srkl).

Reported: val bpb of each, and the gain over scratch in percent (target: >= 3 %).

    python benchmarks/kd_gain.py [--teacher-budget 6m] [--student-tokens 2000000] [--losses fkl,rkl,skl,srkl]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import report

from distill.losses import KDLossConfig
from distill.teachers import CodeLMTeacher
from distill.train import distill
from harness.budget import parse_budget
from harness.data import CorpusSpec, prepare_corpus
from harness.run_files import EVAL_BYTES, read_metrics
from nas.counting import arch_metrics
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-budget", default="6m")
    ap.add_argument("--student-tokens", type=int, default=2_000_000)
    ap.add_argument("--losses", default="fkl,rkl,skl,srkl")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--ce-weight", type=float, default=0.5)
    ap.add_argument("--teacher-dir", type=Path, default=None, help="reuse a trained teacher run folder")
    ap.add_argument("--eval-bytes", type=int, default=EVAL_BYTES)
    args = ap.parse_args()
    spec = CorpusSpec()
    corpus = prepare_corpus(spec, "byte")
    teacher_arch = ArchConfig(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, context_length=256)
    student_arch = ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=256, context_length=256)
    common = {"batch_size": 16, "eval_bytes": args.eval_bytes, "device": "cpu", "measure_latency": False, "seed": 0}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tdir = args.teacher_dir or Path(tmp) / "teacher"
        if not (tdir / "metrics.json").is_file():
            tdir.mkdir(parents=True, exist_ok=True)
            cfg = TrainConfig.from_budget(parse_budget(args.teacher_budget), **common)
            Trainer(teacher_arch, corpus, cfg, tdir, spec, log_to_console=True).run()
        teacher = CodeLMTeacher(tdir)
        tm = read_metrics(tdir).flat()
        rows.append(
            {
                "model": "teacher",
                "loss": "-",
                "params": arch_metrics(teacher.arch)["params"],
                "tokens": tm["tokens_trained"],
                "val_bpb": tm["val_bpb"],
                "gain_vs_scratch_pct": None,
                "train_s": tm["train_s"],
            }
        )
        student_cfg = TrainConfig(budget_tokens=args.student_tokens, **common)
        sdir = Path(tmp) / "scratch"
        sdir.mkdir()
        scratch = Trainer(student_arch, corpus, student_cfg, sdir, spec, log_to_console=True).run().metrics
        base = scratch["val_bpb"]
        rows.append(
            {
                "model": "student",
                "loss": "scratch (CE)",
                "params": scratch["params"],
                "tokens": scratch["tokens_trained"],
                "val_bpb": base,
                "gain_vs_scratch_pct": 0.0,
                "train_s": scratch["train_s"],
            }
        )
        for loss in [x.strip() for x in args.losses.split(",") if x.strip()]:
            # validated from the command line's strings: an unknown --losses name is pydantic's error
            kd = KDLossConfig.model_validate(
                {"kind": loss, "temperature": args.temperature, "ce_weight": args.ce_weight}
            )
            m = distill(
                teacher, student_arch, spec, student_cfg, kd, Path(tmp) / f"kd-{loss}", eval_teacher=False
            ).metrics
            rows.append(
                {
                    "model": "student",
                    "loss": f"{loss} (T={args.temperature:g}, ce {args.ce_weight:g})",
                    "params": m["params"],
                    "tokens": m["tokens_trained"],
                    "val_bpb": m["val_bpb"],
                    "gain_vs_scratch_pct": round(100 * (base - m["val_bpb"]) / base, 2),
                    "train_s": m["train_s"],
                }
            )
    report(
        "kd_gain",
        f"KD gain at {args.student_tokens:,} student tokens (CPU, byte tokenizer, stdlib corpus)",
        rows,
        {"teacher_budget": args.teacher_budget, "student_tokens": args.student_tokens, "target_gain_pct": 3.0},
    )


if __name__ == "__main__":
    main()
