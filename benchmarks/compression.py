"""Compression figures on this CPU: INT8 and 50 % pruning (with recovery) on a trained model, and
per-token decode latency of ~10M / ~50M-parameter shapes in fp32, INT8 (PyTorch dynamic int8 kernels)
torchao's int8 configs, and the ONNX decode step (KV cache in/out) under onnxruntime fp32 / int8.

1. Train (or reuse with --model) a 4 x 128 byte model on the stdlib corpus for --train-budget.
2. ``compress`` it: --int8; magnitude / wanda / ffn at 50 % with a --recover fine-tune, each then INT8.
3. Latency: random-init models of the two sizes (latency does not depend on the weights' values).

    python benchmarks/compression.py [--model runs/x] [--train-budget 3m] [--recover 60s] \
        [--skip-quality|--skip-latency]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from pathlib import Path

import torch
from _common import report

from harness.budget import parse_budget
from harness.data import CorpusSpec, prepare_corpus
from harness.metrics import measure_latency
from harness.run_files import EVAL_BYTES
from kernels.compress import CompressConfig, compress
from kernels.prune import prune_attention_heads, prune_ffn_channels
from kernels.quant import for_runtime
from nas.model import build_model
from nas.space import ArchConfig
from nas.train import TrainConfig, Trainer

SHAPES = {
    "~10M": ArchConfig(
        n_layers=6,
        d_model=384,
        n_heads=6,
        n_kv_heads=6,
        d_ff=1024,
        activation="swiglu",
        norm="rmsnorm",
        context_length=512,
    ),
    "~50M": ArchConfig(
        n_layers=10,
        d_model=640,
        n_heads=10,
        n_kv_heads=10,
        d_ff=1792,
        activation="swiglu",
        norm="rmsnorm",
        context_length=512,
    ),
}


def _p50(model: torch.nn.Module) -> float:
    return float(measure_latency(model, repeats=5).as_metrics()["latency_ms_p50"])


def quality_rows(model_dir: Path | None, train_budget: str, recover_budget: str, eval_bytes: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = model_dir
        if src is None:
            src = Path(tmp) / "src"
            arch = ArchConfig(
                n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512, activation="swiglu", norm="rmsnorm"
            )
            cfg = TrainConfig.from_budget(parse_budget(train_budget), device="cpu", eval_bytes=eval_bytes)
            Trainer(arch, prepare_corpus(CorpusSpec(), "byte"), cfg, src, log_to_console=True).run()
        recover = parse_budget(recover_budget)
        runs = [("int8", CompressConfig(int8=True, eval_bytes=eval_bytes))]
        for method in ("magnitude", "wanda", "ffn", "heads"):
            runs.append(
                (
                    f"{method}:0.5 + recover {recover_budget} + int8",
                    CompressConfig.with_recovery(recover, prune=f"{method}:0.5", int8=True, eval_bytes=eval_bytes),
                )
            )
        for name, cfg in runs:
            m = compress(src, Path(tmp) / name.split(" ")[0].replace(":", "-"), cfg, log_to_console=False)
            rows.append(
                {
                    "pipeline": name,
                    "val_bpb_before": m["val_bpb_before"],
                    "pruned": m.get("val_bpb_pruned"),
                    "recovered": m.get("val_bpb_recovered"),
                    "int8_weights": m["val_bpb_int8_weights"],
                    "final (cpu int8)": m["val_bpb"],
                    "change_pct": m["val_bpb_change_pct"],
                    "linear_int8_ratio": m["int8_linear_ratio"],
                    "disk_fp32_MB": m["size_bytes_on_disk_fp32_before"] / 1e6,
                    "disk_int8_MB": m["size_bytes_on_disk_int8"] / 1e6,
                    "ms_before": m.get("latency_ms_p50_before"),
                    "ms_after": m.get("latency_ms_p50"),
                }
            )
    return rows


def latency_rows() -> list[dict]:
    from kernels.onnx_export import OnnxDecoder, export_decode_step, quantize_onnx_int8

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch in SHAPES.items():
            model = build_model(arch, seed=0).eval()
            params = sum(p.numel() for p in model.parameters())
            variants = {
                "fp32": model,
                "int8 (torch dynamic, per-channel)": for_runtime(model, "cpu"),
                "ffn:0.5 fp32": prune_ffn_channels(model, 0.5),
                "ffn:0.5 int8": for_runtime(prune_ffn_channels(model, 0.5), "cpu"),
                "heads:0.5 fp32": prune_attention_heads(model, 0.5),
                "heads:0.5 int8": for_runtime(prune_attention_heads(model, 0.5), "cpu"),
            }
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torchao.quantization import (
                        Int8DynamicActivationInt8WeightConfig,
                        Int8WeightOnlyConfig,
                        quantize_,
                    )
                for cfg_name, tao in (
                    ("torchao int8 weight-only", Int8WeightOnlyConfig()),
                    ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
                ):
                    q = copy.deepcopy(model)
                    quantize_(q, tao)
                    variants[cfg_name] = q
            except ImportError:
                pass
            timings = {name: _p50(m) for name, m in variants.items()}
            onnx_path = export_decode_step(model, Path(tmp) / label.strip("~"))
            for name, path in (("onnxruntime fp32", onnx_path), ("onnxruntime int8", quantize_onnx_int8(onnx_path))):
                timings[name] = OnnxDecoder(path, model, torch.get_num_threads()).decode_latency_ms()["latency_ms_p50"]
            for name, ms in timings.items():
                rows.append(
                    {
                        "shape": f"{label} ({params / 1e6:.1f}M)",
                        "variant": name,
                        "ms_per_token_p50": ms,
                        "speedup_vs_fp32": round(timings["fp32"] / ms, 2),
                    }
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--train-budget", default="3m")
    ap.add_argument("--recover", default="60s")
    ap.add_argument("--eval-bytes", type=int, default=EVAL_BYTES)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    if not args.skip_quality:
        report(
            "compression_quality",
            "Compression of a trained 4x128 model (val bpb, size, CPU latency)",
            quality_rows(args.model, args.train_budget, args.recover, args.eval_bytes),
        )
    if not args.skip_latency:
        report("compression_latency", f"Batch-1 decode latency, {torch.get_num_threads()} CPU threads", latency_rows())


if __name__ == "__main__":
    main()
