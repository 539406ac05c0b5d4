"""GPU readiness: every CUDA path of the project run once, with one JSON of what ran, what failed and the figures.

    bash scripts/gpu_check.sh                       # writes benchmarks/results/gpu_check.json
    bash scripts/gpu_check.sh --out /tmp/gc.json --budget-s 420 --only train_bf16,decode_cuda_graph
    bash scripts/gpu_check.sh --list                # the checks, in the order they run

Each check is a small function run once, wall-clocked, whose outcome is ``ok`` (with its figures),
``failed`` (with the one-line error and the end of the traceback) or ``skipped`` (with why), so one
failing check never stops the others. The checks go through the project's own code: the trainer
(:mod:`nas.train`, bf16 autocast, with and without ``torch.compile``), decode latency
(:mod:`kernels.latency`: eager, static, compile, CUDA graphs), torchao INT8 (:func:`kernels.quant.for_runtime`),
2:4 sparsity (:func:`kernels.prune.prune_semi_structured_24`), each Triton kernel of
:mod:`triton_ops.ops` against its PyTorch reference, and a trial through each executor of
:mod:`nas.executors` on the GPU (local worker process; Ray with ``num_gpus=1``).

On a machine without CUDA the checks that need no GPU run (environment, imports, the small corpus) and
every CUDA check is recorded as skipped with its reason; the exit code is 0 when nothing failed.
The JSON is rewritten after every check, so a run killed half-way still leaves what it measured.

MFU is the model FLOPs the trainer achieved (``3 x`` :func:`nas.counting.flops_per_token`, forward and
backward, times tokens/s) over the device's dense bf16 peak: from :data:`PEAK_BF16_TFLOPS` (vendor
datasheets, dense tensor-core rate without sparsity) by device name, or ``AUTONAS_PEAK_TFLOPS``. The
check also measures a large bf16 matrix product, the ceiling reachable in practice, and reports MFU
against that too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

# The project's modules (and triton, torchao, safetensors) are imported inside the checks that use them, on
# purpose: a module that fails to import fails its own checks, recorded with the error, and the others still run.
if TYPE_CHECKING:
    from harness.data import TokenizedCorpus
    from nas.model import Block, CodeLM

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched
# against torch.cuda.get_device_name() in order (first match wins).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),  # NVIDIA H200 SXM datasheet (same tensor cores as H100 SXM)
    ("H100 PCIe", 756.0),  # NVIDIA H100 PCIe datasheet
    ("H100 NVL", 835.0),  # NVIDIA H100 NVL datasheet
    ("H100", 989.4),  # NVIDIA H100 SXM datasheet
    ("GH200", 989.4),  # NVIDIA GH200 datasheet
    ("A100", 312.0),  # NVIDIA A100 datasheet
    ("L40S", 362.1),  # NVIDIA L40S datasheet
    ("L4", 121.0),  # NVIDIA L4 datasheet
    ("A10", 125.0),  # NVIDIA A10 datasheet (A10G reports the same class of part)
]

# The checks' model: the train_throughput benchmark's "20m" preset (8 x 448, ~20 M parameters, byte vocab).
ARCH_20M = dict(n_layers=8, d_model=448, n_heads=7, n_kv_heads=7, d_ff=1216, context_length=512)
TINY_ARCH = dict(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_ff=128, context_length=128)
CORPUS_FILES = [
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "textwrap.py", "string.py",
    "shlex.py", "fnmatch.py", "glob.py", "heapq.py", "bisect.py", "colorsys.py", "keyword.py", "numbers.py",
    "queue.py", "sched.py", "stat.py", "token.py", "csv.py", "difflib.py", "getopt.py", "gettext.py", "graphlib.py",
]  # fmt: skip


class Skip(Exception):
    """Raised by a check that cannot run here; its message is the reason."""


@dataclass
class Check:
    name: str
    fn: Callable[[Context], dict[str, Any]]
    needs_cuda: bool = True
    limit_s: float = 90.0  # the watchdog's limit for this check
    needs: tuple[str, ...] = ()  # checks whose results this one uses (recorded in the reason when they failed)


@dataclass
class Context:
    device: torch.device
    work: Path
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    shared: dict[str, Any] = field(default_factory=dict)  # what one check leaves for the next (corpus, trained weights)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# --------------------------------------------------------------------------------------------- helpers


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


def _tb_tail(err: BaseException, lines: int = 14) -> list[str]:
    out = [
        ln.rstrip()
        for chunk in traceback.format_exception(type(err), err, err.__traceback__)
        for ln in chunk.splitlines()
    ]
    return out[-lines:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ms(fn: Callable[[], Any], device: torch.device, rep_ms: int = 100) -> float:
    """Median milliseconds per call: ``triton.testing.do_bench`` on CUDA (it flushes the L2 between calls),
    else a wall-clock loop with a device sync."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
        except ImportError:
            pass
    for _ in range(3):
        fn()
    _sync(device)
    times: list[float] = []
    end = time.perf_counter() + rep_ms / 1e3
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_tflops(name: str | None) -> tuple[float | None, str]:
    env = os.environ.get("AUTONAS_PEAK_TFLOPS")
    if env:
        return float(env), "AUTONAS_PEAK_TFLOPS"
    for key, value in PEAK_BF16_TFLOPS:
        if name and key.lower() in name.lower():
            return value, f"datasheet dense bf16 of {key}"
    return None, "unknown device: set AUTONAS_PEAK_TFLOPS"


def _require_cuda(ctx: Context) -> None:
    if not ctx.cuda:
        raise Skip("no CUDA device (torch.cuda.is_available() is False)")


def _require_module(name: str, why: str = "") -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise Skip(f"{name} is not installed{why} ({_one_line(err)})") from None


def _arch(preset: dict[str, Any]):  # -> ArchConfig
    from nas.space import ArchConfig

    return ArchConfig(**preset)


def _model(ctx: Context) -> CodeLM:
    """The 20M model on the device, with the trained weights when the bf16 check left them."""
    from nas.model import build_model

    model = build_model(_arch(ARCH_20M), seed=0)
    weights = ctx.shared.get("trained_weights")
    if weights is not None:
        from safetensors.torch import load_model

        load_model(model, str(weights))
    return model.to(ctx.device).eval()


def _corpus(ctx: Context) -> TokenizedCorpus:
    corpus = ctx.shared.get("corpus")
    if corpus is None:
        raise Skip("the corpus check did not prepare a corpus")
    return corpus


@contextlib.contextmanager
def _captured_warnings(into: list[str]):
    """Python warnings and torch's WARNING log lines (e.g. Inductor skipping CUDA graphs), deduplicated."""

    class _H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(f"{record.name}: {record.getMessage()}")

    handler = _H(level=logging.WARNING)
    logger = logging.getLogger("torch")
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            logger.removeHandler(handler)
            into.extend(f"{w.category.__name__}: {w.message}" for w in caught)


# ------------------------------------------------------------------------------------- CPU-side checks


def check_environment(ctx: Context) -> dict[str, Any]:
    """Python, torch, CUDA and the optional packages' versions."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    for mod in ("triton", "torchao", "ray", "ctranslate2", "onnxruntime", "pydantic", "transformers"):
        try:
            info[f"{mod}_version"] = getattr(importlib.import_module(mod), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a broken optional install is a fact to record
            info[f"{mod}_version"] = f"missing ({_one_line(err)[:80]})"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def check_imports(ctx: Context) -> dict[str, Any]:
    """Every project module on the checks' paths imports here (optional packages aside)."""
    mods = [
        "nas.model",
        "nas.counting",
        "harness.data",
        "harness.metrics",
        "nas.train",
        "nas.trial",
        "nas.executors",
        "kernels.latency",
        "kernels.quant",
        "kernels.prune",
        "triton_ops.ops",
    ]
    for m in mods:
        importlib.import_module(m)
    return {"modules": len(mods)}


def check_corpus(ctx: Context) -> dict[str, Any]:
    """A small real corpus (standard-library files, byte tokens) for the training and eval checks."""
    from harness.data import CorpusSpec, prepare_corpus, stdlib_dir

    src, root = stdlib_dir(), ctx.work / "corpus"
    copied = 0
    for rel in CORPUS_FILES:
        if (src / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, root / rel)
            copied += 1
    if copied < 5:
        raise RuntimeError(f"only {copied} standard-library files found under {src}")
    spec = CorpusSpec(source=str(root))
    corpus = prepare_corpus(spec, "byte")
    ctx.shared["corpus"], ctx.shared["corpus_spec"] = corpus, spec
    return {"files": copied, "train_tokens": int(corpus["train"].size), "val_tokens": int(corpus["val"].size)}


# ----------------------------------------------------------------------------------------- CUDA checks


def check_cuda_device(ctx: Context) -> dict[str, Any]:
    """The device, and the bf16 matrix-product rate reachable on it (8192^3, median of timed runs)."""
    _require_cuda(ctx)
    props = torch.cuda.get_device_properties(ctx.device)
    name = torch.cuda.get_device_name(ctx.device)
    n = 8192
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    ms = bench_ms(partial(torch.matmul, a, b), ctx.device, rep_ms=200)  # no closure: `del a, b` below frees them
    measured = 2 * n**3 / (ms * 1e-3) / 1e12
    peak, source = peak_tflops(name)
    ctx.shared["peak_tflops"], ctx.shared["measured_tflops"] = peak, measured
    del a, b
    torch.cuda.empty_cache()
    return {
        "gpu": name,
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_matmul_8192_tflops": round(measured, 1),
        "peak_bf16_tflops": peak,
        "peak_source": source,
    }


def _train(
    ctx: Context, name: str, steps: int, batch: int, compile: bool, check_learning: bool = True
) -> dict[str, Any]:
    from nas.counting import count_params, flops_per_token
    from nas.train import TrainConfig, Trainer, prepare_run_dir

    arch, corpus = _arch(ARCH_20M), _corpus(ctx)
    out = ctx.work / name
    prepare_run_dir(out, overwrite=True)
    cfg = TrainConfig(
        budget_tokens=steps * batch * arch.context_length,
        batch_size=batch,
        lr=1e-3,
        device=str(ctx.device),
        precision="bf16",
        compile=compile,
        eval_bytes=65_536,
        measure_latency=False,
        checkpoint_every_s=1e9,
        log_every=10,
    )
    ctx.shared["watch_log"] = out / "log.txt"  # what a timed-out check shows of its progress
    outcome = Trainer(arch, corpus, cfg, out, ctx.shared.get("corpus_spec"), log_to_console=False).run()
    ctx.shared.pop("watch_log", None)
    m = outcome.metrics
    if outcome.status != "ok":
        raise RuntimeError(f"trainer status {outcome.status}: {outcome.fail_reason}")
    tps = float(m["tokens_per_s"])
    flops = 3 * flops_per_token(arch)  # forward + backward, attention at the average position
    figures = {
        "params": count_params(arch).total,
        "batch": batch,
        "context": arch.context_length,
        "steps": m["steps"],
        "tokens_per_s": round(tps),
        "achieved_tflops": round(tps * flops / 1e12, 2),
        "train_loss_first": round(m["train_loss_first"], 4),
        "train_loss_last": round(m["train_loss_last"], 4),
        "val_bpb": round(m["val_bpb"], 4),
        "peak_mem_mb": m.get("peak_mem_mb"),
        "compile_s": m.get("compile_s"),
    }
    peak, measured = ctx.shared.get("peak_tflops"), ctx.shared.get("measured_tflops")
    if peak:
        figures["mfu"] = round(tps * flops / (peak * 1e12), 4)
    if measured:
        figures["mfu_vs_measured_matmul"] = round(tps * flops / (measured * 1e12), 4)
    if check_learning and (not math.isfinite(m["val_bpb"]) or m["train_loss_last"] >= m["train_loss_first"]):
        raise RuntimeError(
            f"training did not learn: loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}, "
            f"val_bpb {m['val_bpb']}"
        )
    return figures


def check_train_bf16(ctx: Context) -> dict[str, Any]:
    """The trainer's bf16 autocast step on the GPU (a short warm-up run first, so the timed run is steady)."""
    _require_cuda(ctx)
    _train(ctx, "train_warmup", steps=10, batch=32, compile=False, check_learning=False)
    figures = _train(ctx, "train_bf16", steps=200, batch=32, compile=False)
    ctx.shared["trained_weights"] = ctx.work / "train_bf16" / "model.safetensors"
    ctx.shared["eager_tokens_per_s"] = figures["tokens_per_s"]
    return figures


def check_train_compile(ctx: Context) -> dict[str, Any]:
    """The trainer with ``compile=True`` (torch.compile of the model, Inductor on CUDA)."""
    _require_cuda(ctx)
    _require_module("triton", " (Inductor generates Triton kernels on CUDA)")
    figures = _train(ctx, "train_compile", steps=200, batch=32, compile=True)
    eager = ctx.shared.get("eager_tokens_per_s")
    if eager:
        figures["speedup_vs_eager"] = round(figures["tokens_per_s"] / eager, 3)
    return figures


def _teacher_forced(model, mode: str, prompt: torch.Tensor, ref: tuple[int, ...]) -> list[int]:
    """The mode's step fed the reference tokens (not its own): its prediction after each, so one near-tie flip
    does not make every later token differ."""
    from kernels.latency import _stepper

    cache = model.new_cache(1)
    step = _stepper(model, cache, mode)
    with torch.no_grad():
        preds = [int(model(prompt, cache)[:, -1:].argmax(-1))]
        position = torch.full((1,), prompt.shape[1], dtype=torch.long, device=prompt.device)
        for tok in ref[:-1]:
            preds.append(int(step(torch.tensor([[tok]], device=prompt.device), position).clone()))
            position.add_(1)
    return preds


def _decode(ctx: Context, mode: str) -> dict[str, Any]:
    from kernels.latency import measure_decode

    _require_cuda(ctx)
    model = _model(ctx)
    r = measure_decode(model, mode=mode, prompt_tokens=32, decode_tokens=64, warmup=2, repeats=5)
    figures: dict[str, Any] = {
        "dtype": "fp32",
        "prompt_tokens": r.prompt_tokens,
        "decode_tokens": r.decode_tokens,
        "prefill_ms_p50": round(r.prefill_ms_p50, 4),
        "decode_ms_p50": round(r.decode_ms_p50, 4),
        "decode_ms_p90": round(r.decode_ms_p90, 4),
        "tokens_per_s": round(1e3 / max(r.decode_ms_p50, 1e-9), 1),
    }
    ref = ctx.shared.get("decode_tokens_eager")
    if mode == "eager":
        ctx.shared["decode_tokens_eager"] = r.tokens
        return figures
    if ref is None:
        return figures
    agree = sum(a == b for a, b in zip(ref, r.tokens, strict=False))
    figures["tokens_equal_eager"] = f"{agree}/{len(ref)}"
    if agree == len(ref):
        return figures
    # free-running sequences diverge for good after one differing token: say where, how close a call it was
    # for the eager model there, and how the mode does when fed the eager tokens (teacher forcing)
    first = next(i for i, (a, b) in enumerate(zip(ref, r.tokens, strict=False)) if a != b)
    figures["first_divergence"] = first
    prompt = torch.randint(
        0, model.arch.vocab_size, (1, r.prompt_tokens), generator=torch.Generator().manual_seed(0)
    ).to(ctx.device)
    with torch.no_grad():
        logits = model(torch.cat([prompt, torch.tensor([list(ref[:-1])], device=ctx.device)], 1))[
            0, r.prompt_tokens - 1 :
        ].float()
    top2 = logits.topk(2, dim=-1).values
    figures["eager_top2_margin_at_divergence"] = float(f"{(top2[first, 0] - top2[first, 1]).item():.3g}")
    forced = _teacher_forced(model, mode, prompt, ref)
    bad = [i for i, (a, b) in enumerate(zip(ref, forced, strict=True)) if a != b]
    figures["teacher_forced_equal_eager"] = f"{len(ref) - len(bad)}/{len(ref)}"
    figures["teacher_forced_mismatch_at"] = bad[:8]
    ctx.shared["figures_on_failure"] = figures
    raise RuntimeError(
        f"greedy tokens differ from eager: {agree}/{len(ref)} equal, first at {first}; "
        f"fed the eager tokens {len(ref) - len(bad)}/{len(ref)} equal"
    )


def check_decode_eager(ctx: Context) -> dict[str, Any]:
    """kernels.latency.measure_decode, mode eager (the model's own cached forward); its tokens are the reference."""
    return _decode(ctx, "eager")


def check_decode_static(ctx: Context) -> dict[str, Any]:
    """kernels.latency mode static (fixed-shape step over the whole cache), tokens compared with eager."""
    return _decode(ctx, "static")


def check_decode_cuda_graph(ctx: Context) -> dict[str, Any]:
    """kernels.latency mode cuda-graph (the static step captured once, replayed per token), tokens vs eager."""
    return _decode(ctx, "cuda-graph")


def check_decode_compile(ctx: Context) -> dict[str, Any]:
    """kernels.latency mode compile (torch.compile, reduce-overhead on CUDA), tokens compared with eager."""
    _require_module("triton", " (Inductor generates Triton kernels on CUDA)")
    return _decode(ctx, "compile")


def _triton_ops(ctx: Context):
    _require_cuda(ctx)
    _require_module("triton")
    from triton_ops import ops

    if not ops._HAVE_TRITON:
        raise Skip("triton_ops.ops could not define its kernels (triton import failed there)")
    return ops


def _compare(
    ctx: Context,
    got: torch.Tensor,
    ref: torch.Tensor,
    fn: Callable[[], Any],
    ref_fn: Callable[[], Any],
    tol: float,
    bytes_moved: int | None = None,
) -> dict[str, Any]:
    err = (got.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    ms, ref_ms = bench_ms(fn, ctx.device), bench_ms(ref_fn, ctx.device)
    figures = {
        "max_abs_err": float(f"{err:.3g}"),
        "max_rel_err": float(f"{err / max(scale, 1e-12):.3g}"),
        "triton_ms": round(ms, 4),
        "reference_ms": round(ref_ms, 4),
        "speedup": round(ref_ms / ms, 3),
    }
    if bytes_moved:
        figures["triton_gb_s"] = round(bytes_moved / (ms * 1e-3) / 1e9, 1)
    if not err <= tol * max(scale, 1.0):
        raise RuntimeError(
            f"Triton result differs from the reference: max abs error {err:.3g} (scale {scale:.3g}, tol {tol})"
        )
    return figures


def check_triton_rmsnorm(ctx: Context) -> dict[str, Any]:
    """Fused RMSNorm kernel vs rmsnorm_reference: max error and speed."""
    ops = _triton_ops(ctx)
    x = torch.randn(32768, 512, device=ctx.device, dtype=torch.bfloat16)
    w = torch.rand(512, device=ctx.device) + 0.5
    f, r = (lambda: ops.rmsnorm(x, w)), (lambda: ops.rmsnorm_reference(x, w))
    return {"shape": "32768x512 bf16", **_compare(ctx, f(), r(), f, r, tol=1e-2, bytes_moved=2 * x.numel() * 2)}


def check_triton_swiglu(ctx: Context) -> dict[str, Any]:
    """Fused SwiGLU kernel vs swiglu_reference: max error and speed."""
    ops = _triton_ops(ctx)
    g = torch.randn(32768, 1216, device=ctx.device, dtype=torch.bfloat16)
    u = torch.randn(32768, 1216, device=ctx.device, dtype=torch.bfloat16)
    f, r = (lambda: ops.swiglu(g, u)), (lambda: ops.swiglu_reference(g, u))
    return {"shape": "32768x1216 bf16", **_compare(ctx, f(), r(), f, r, tol=2e-2, bytes_moved=3 * g.numel() * 2)}


def check_triton_int8_linear(ctx: Context) -> dict[str, Any]:
    """Weight-only INT8 matmul kernel vs int8_linear_reference: max error and speed."""
    ops = _triton_ops(ctx)
    x = torch.randn(64, 1024, device=ctx.device)
    q = torch.randint(-127, 128, (4096, 1024), device=ctx.device, dtype=torch.int8)
    s = torch.rand(4096, device=ctx.device) / 127
    f, r = (lambda: ops.int8_linear(x, q, s)), (lambda: ops.int8_linear_reference(x, q, s))
    return {
        "shape": "x 64x1024 fp32, w 4096x1024 int8",
        **_compare(ctx, f(), r(), f, r, tol=2e-2, bytes_moved=q.numel() + x.numel() * 4 + 64 * 4096 * 4),
    }


def check_triton_fused_fkl(ctx: Context) -> dict[str, Any]:
    """Forward KL loss and its gradient, fused kernel vs the autograd reference."""
    ops = _triton_ops(ctx)
    s = torch.randn(4096, 8192, device=ctx.device, requires_grad=True)
    t = torch.randn(4096, 8192, device=ctx.device)

    def run(fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        s.grad = None
        loss = fn(s, t, 2.0)
        loss.backward()
        assert s.grad is not None  # backward() just filled it
        return loss.detach(), s.grad.detach().clone()

    (loss, grad), (ref_loss, ref_grad) = run(ops.fused_fkl), run(ops.fkl_reference)
    grad_err = (grad - ref_grad).abs().max().item()
    figures = _compare(ctx, loss, ref_loss, lambda: run(ops.fused_fkl), lambda: run(ops.fkl_reference), tol=1e-3)
    figures = {
        "shape": "4096x8192 fp32, T=2, forward+backward",
        **figures,
        "grad_max_abs_err": float(f"{grad_err:.3g}"),
    }
    if not grad_err <= 1e-4 * max(ref_grad.abs().max().item(), 1.0):
        raise RuntimeError(f"fused FKL gradient differs from the reference: max abs error {grad_err:.3g}")
    return figures


def check_torchao_int8(ctx: Context) -> dict[str, Any]:
    """kernels.quant.for_runtime(..., "cuda"): torchao quantize_ with Int8WeightOnlyConfig and the dynamic variant."""
    _require_cuda(ctx)
    _require_module("torchao")
    from harness.metrics import evaluate_bpb
    from kernels.latency import measure_decode
    from kernels.quant import for_runtime

    corpus = _corpus(ctx)
    base = _model(ctx)
    n = base.arch.context_length
    x = torch.from_numpy(corpus["val"][: 4 * n].astype("int64")).view(4, n).to(ctx.device)
    with torch.no_grad():
        ref = base(x).float()
    bpb = lambda m: evaluate_bpb(m, corpus["val"], corpus.token_bytes, 65_536, 16, ctx.device).bpb  # noqa: E731
    figures: dict[str, Any] = {
        "val_bpb_fp32": round(bpb(base), 4),
        "decode_ms_p50_fp32": round(measure_decode(base, "eager", 32, 8, 1, 2).decode_ms_p50, 4),
    }
    for label, dyn in (("weight_only", False), ("dynamic_act", True)):
        q = cast("CodeLM", for_runtime(base.cpu(), "cuda", dynamic_activations=dyn))  # a copy with int8 linears
        base.to(ctx.device)
        with torch.no_grad():
            out = q(x).float()
        figures[f"{label}_logits_max_abs_err"] = float(f"{(out - ref).abs().max().item():.3g}")
        figures[f"{label}_val_bpb"] = round(bpb(q), 4)
        first = cast("Block", q.layers[0])  # the model's layers are Blocks
        figures[f"{label}_weight_type"] = type(first.mlp.gate_proj.weight).__name__ if hasattr(first, "mlp") else "?"
        try:
            figures[f"{label}_decode_ms_p50"] = round(measure_decode(q, "eager", 32, 8, 1, 2).decode_ms_p50, 4)
        except Exception as err:  # noqa: BLE001 - quantized decode is a figure, the quantization is the check
            figures[f"{label}_decode_error"] = _one_line(err)
    return figures


def check_sparsity_24(ctx: Context) -> dict[str, Any]:
    """kernels.prune.prune_semi_structured_24 on the GPU, then bits per byte as kernels.compress measures it."""
    _require_cuda(ctx)
    from harness.metrics import evaluate_bpb
    from kernels.prune import prune_semi_structured_24

    corpus = _corpus(ctx)
    figures: dict[str, Any] = {}
    # the hardware feature itself: one 4096x4096 fp16 linear, dense vs 2:4
    from torch.sparse import to_sparse_semi_structured

    w = torch.randn(4096, 4096, device=ctx.device, dtype=torch.float16)
    mask = torch.tensor([1, 1, 0, 0], device=ctx.device, dtype=torch.bool).tile(4096, 1024)
    w = w * mask
    xs = torch.randn(4096, 4096, device=ctx.device, dtype=torch.float16)
    ws = to_sparse_semi_structured(w)
    dense_ms = bench_ms(lambda: torch.nn.functional.linear(xs, w), ctx.device)
    sparse_ms = bench_ms(lambda: torch.nn.functional.linear(xs, ws), ctx.device)
    figures.update(
        {
            "linear_4096_dense_ms": round(dense_ms, 4),
            "linear_4096_sparse_ms": round(sparse_ms, 4),
            "linear_4096_speedup": round(dense_ms / sparse_ms, 3),
            "linear_4096_max_abs_err": float(
                f"{(torch.nn.functional.linear(xs, ws) - torch.nn.functional.linear(xs, w)).abs().max().item():.3g}"
            ),
        }
    )
    model = _model(ctx)
    figures["val_bpb_dense"] = round(
        evaluate_bpb(model, corpus["val"], corpus.token_bytes, 65_536, 16, ctx.device).bpb, 4
    )
    prune_semi_structured_24(model)
    figures["sparse_weight_type"] = type(cast("Block", model.layers[0]).mlp.gate_proj.weight).__name__
    from kernels.prune import SEMI_STRUCTURED_DTYPE

    # exactly as kernels.compress measures val_bpb_pruned: fp16 autocast, the only input cuSPARSELt takes
    figures["val_bpb_pruned"] = round(
        evaluate_bpb(model, corpus["val"], corpus.token_bytes, 65_536, 16, "cuda", SEMI_STRUCTURED_DTYPE).bpb, 4
    )
    if not math.isfinite(figures["val_bpb_pruned"]):
        raise RuntimeError(f"2:4 model gives val_bpb {figures['val_bpb_pruned']}")
    return figures


def _trial_spec(ctx: Context, number: int, out: Path):  # -> TrialSpec
    from nas.trial import TrialSpec

    return TrialSpec(
        number=number,
        arch=_arch(TINY_ARCH),
        budget="200ktok",
        out_dir=str(out),
        corpus=ctx.shared["corpus_spec"],
        tokenizer="byte",
        batch_size=16,
        eval_bytes=16_384,
        time_limit_s=120,
        measure_latency=True,
    )


def _one_gpu_trial(ex: Any, spec: Any, what: str, t0: float) -> tuple[Any, dict[str, Any]]:
    """Submit one trial to an executor, wait up to 150 s, and insist that it ran, and ran on the GPU."""
    try:
        ex.submit(spec)
        results: list[Any] = []
        while not results and time.perf_counter() - t0 < 150:
            results = ex.wait(timeout=150)
    finally:
        ex.shutdown()
    if not results:
        raise RuntimeError(f"no result from the {what} within 150 s")
    r = results[0]
    figures = {
        "status": r.status,
        "run_s": round(r.run_s, 2),
        "device": r.metrics.get("device"),
        "tokens_per_s": r.metrics.get("tokens_per_s"),
        "val_bpb": r.metrics.get("val_bpb"),
        "latency_ms_p50": r.metrics.get("latency_ms_p50"),
    }
    if r.status != "ok":
        raise RuntimeError(f"trial {r.status}: {r.fail_reason}")
    if not str(r.metrics.get("device", "")).startswith("cuda"):
        raise RuntimeError(f"the {what} ran on {r.metrics.get('device')!r}, not on the GPU")
    return r, figures


def check_local_executor_trial(ctx: Context) -> dict[str, Any]:
    """A trial through nas.executors.LocalExecutor's worker process on the GPU (one worker per GPU)."""
    _require_cuda(ctx)
    _corpus(ctx)
    from nas.executors import LocalExecutor

    ex = LocalExecutor(devices=[f"cuda:{ctx.device.index or 0}"])
    return _one_gpu_trial(ex, _trial_spec(ctx, 0, ctx.work / "trial_local"), "local worker", time.perf_counter())[1]


def check_ray_trial(ctx: Context) -> dict[str, Any]:
    """A trial through nas.executors.RayExecutor on a local Ray cluster, each task asking for num_gpus=1."""
    _require_cuda(ctx)
    _require_module("ray")
    _corpus(ctx)
    from nas.executors import RayExecutor

    t0 = time.perf_counter()
    ex = RayExecutor("local", gpus_per_trial=1.0)
    start_s = time.perf_counter() - t0
    gpus = ex.ray.cluster_resources().get("GPU", 0)
    if gpus < 1:
        ex.shutdown()
        raise RuntimeError(f"the local Ray cluster sees {gpus} GPUs")
    _, figures = _one_gpu_trial(ex, _trial_spec(ctx, 1, ctx.work / "trial_ray"), "Ray task", t0)
    return {**figures, "ray_start_s": round(start_s, 2), "cluster_gpus": gpus}


def _project_files_using(name: str) -> list[str]:
    hits = []
    for folder in ("nas", "kernels", "distill", "agent"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == Path(__file__).name:
                continue
            text = path.read_text(errors="replace")
            if f"import {name}" in text or f"from {name}" in text:
                hits.append(str(path.relative_to(ROOT)))
    return hits


def check_ctranslate2_cuda(ctx: Context) -> dict[str, Any]:
    """kernels.ct2_runtime on CUDA: the 20M model's Hugging Face export converted by CTranslate2 (float32, float16,
    int8_float16), greedy tokens compared with PyTorch's, check-window bpb and ms/token per precision. Fails when
    the float32 conversion scores the window differently from PyTorch (more than 0.1 %)."""
    _require_cuda(ctx)
    ct2 = _require_module("ctranslate2")
    if ct2.get_cuda_device_count() == 0:
        raise Skip(f"ctranslate2 {ct2.__version__} has no CUDA support here (get_cuda_device_count() == 0)")
    from kernels.ct2_runtime import Ct2Runtime, convert
    from kernels.onnx_export import torch_nll_nats
    from nas.hf import export_hf

    model = _model(ctx).cpu()
    hf = export_hf(model, ctx.work / "ct2" / "hf")
    window = np.random.default_rng(0).integers(0, model.arch.vocab_size, model.arch.context_length)
    torch_nats = float(torch_nll_nats(model, window).sum())  # on the CPU: the reference arithmetic
    model = model.to(ctx.device)
    prompt = torch.randint(0, model.arch.vocab_size, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    reference = model.generate(prompt, 64, temperature=0.0).tokens
    figures: dict[str, Any] = {"ctranslate2": ct2.__version__, "prompt_tokens": 32, "decode_tokens": 64}
    for precision in ("fp32", "fp16", "int8_fp16"):
        path = convert(hf, ctx.work / "ct2" / precision, precision)
        if isinstance(path, str):
            raise RuntimeError(f"CTranslate2 conversion to {precision}: {path}")
        runtime = Ct2Runtime(f"ct2_{precision}", path, threads=1, device="cuda")
        tokens = runtime.greedy(prompt, 64)
        change = 100 * (float(runtime.nll_nats(window).sum()) - torch_nats) / torch_nats
        lat = runtime.decode_ms(32, 64, repeats=3)
        figures[f"{precision}_tokens_equal_torch"] = f"{sum(a == b for a, b in zip(tokens, reference, strict=True))}/64"
        figures[f"{precision}_nll_change_pct"] = round(change, 4)
        figures[f"{precision}_decode_ms_p50"] = round(lat.ms_p50, 4)
        if precision == "fp32" and abs(change) > 0.1:
            raise RuntimeError(f"CTranslate2 float32 on CUDA scores {change:+.3f} % from PyTorch: {figures}")
    return figures


CHECKS: list[Check] = [
    Check("environment", check_environment, needs_cuda=False, limit_s=60),
    Check("imports", check_imports, needs_cuda=False, limit_s=120),
    Check("corpus", check_corpus, needs_cuda=False, limit_s=120),
    Check("cuda_device", check_cuda_device, limit_s=60),
    Check("train_bf16", check_train_bf16, limit_s=120, needs=("corpus",)),
    Check("triton_rmsnorm", check_triton_rmsnorm, limit_s=60),
    Check("triton_swiglu", check_triton_swiglu, limit_s=60),
    Check("triton_int8_linear", check_triton_int8_linear, limit_s=60),
    Check("triton_fused_fkl", check_triton_fused_fkl, limit_s=60),
    Check("decode_eager", check_decode_eager, limit_s=60),
    Check("decode_static", check_decode_static, limit_s=60),
    Check("decode_cuda_graph", check_decode_cuda_graph, limit_s=60),
    Check("sparsity_24", check_sparsity_24, limit_s=60, needs=("corpus",)),
    Check("local_executor_trial", check_local_executor_trial, limit_s=160, needs=("corpus",)),
    Check("ray_trial", check_ray_trial, limit_s=160, needs=("corpus",)),
    Check("ctranslate2_cuda", check_ctranslate2_cuda, limit_s=180),
    # the compile checks, then torchao last: importing torchao registers its types with torch.compile, and on an
    # H200 the trainer's compile ran past 200 s after torchao and decode_compile in the same process (16.9 s alone)
    Check("train_compile", check_train_compile, limit_s=240, needs=("corpus", "train_bf16")),
    Check("decode_compile", check_decode_compile, limit_s=150),
    Check("torchao_int8", check_torchao_int8, limit_s=90, needs=("corpus",)),
]


# ---------------------------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, ctx: Context, out: Path, checks: list[Check]):
        self.ctx, self.out, self.checks = ctx, out, checks
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.done = False

    def payload(self) -> dict[str, Any]:
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("ok", "failed", "skipped")}
        return {
            "tool": "gpu_check",
            "format": 1,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "device": str(self.ctx.device),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "budget_s": self.ctx.budget_s,
            "wall_s": round(time.perf_counter() - self.ctx.started, 2),
            "summary": counts,
            "checks": self.results,
        }

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.payload(), indent=2, default=str) + "\n")
        os.replace(tmp, self.out)

    def record(
        self,
        check: Check,
        status: str,
        seconds: float,
        figures: dict[str, Any] | None = None,
        reason: str = "",
        tb: list[str] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        row: dict[str, Any] = {"name": check.name, "status": status, "seconds": round(seconds, 2)}
        if reason:
            row["reason" if status == "skipped" else "error"] = reason
        if figures:
            row["figures"] = figures
        if tb:
            row["traceback"] = tb
        if notes:
            row["warnings"] = notes
        self.results.append(row)
        self.write()
        line = f"[gpu_check] {check.name}: {status} ({seconds:.1f} s)" + (f" - {reason}" if reason else "")
        print(line, flush=True)

    def _watchdog(self, check: Check, t0: float, finished: threading.Event, limit_s: float) -> None:
        if finished.wait(limit_s):
            return
        with self.lock:
            if self.done:
                return
            self.done = True
            log = self.ctx.shared.get("watch_log")
            tail = (
                log.read_text(errors="replace").splitlines()[-4:] if isinstance(log, Path) and log.is_file() else None
            )
            self.record(
                check,
                "failed",
                time.perf_counter() - t0,
                reason=f"timed out after {limit_s:.0f} s (hung, too slow, or past the budget)",
                figures={"log_tail": tail} if tail else None,
            )
            names = {r["name"] for r in self.results}
            for c in self.checks:
                if c.name not in names:
                    self.record(c, "skipped", 0.0, reason=f"not run: {check.name} timed out and the run was stopped")
            print_table(self.payload())
            print(f"[gpu_check] wrote {self.out}", flush=True)
        os._exit(1)

    def run(self) -> int:
        failed_names: set[str] = set()
        for check in self.checks:
            elapsed = time.perf_counter() - self.ctx.started
            if check.needs_cuda and not self.ctx.cuda:
                try:  # a check with a more specific reason (no project runtime, missing package) says so
                    if check.fn is check_ctranslate2_cuda and not _project_files_using("ctranslate2"):
                        raise Skip("no CTranslate2 runtime in the project yet")
                    raise Skip("no CUDA device (torch.cuda.is_available() is False)")
                except Skip as why:
                    self.record(check, "skipped", 0.0, reason=str(why))
                continue
            if elapsed + min(check.limit_s, 30) > self.ctx.budget_s:
                self.record(
                    check,
                    "skipped",
                    0.0,
                    reason=f"not run: {elapsed:.0f} s of the {self.ctx.budget_s:.0f} s budget spent",
                )
                continue
            t0 = time.perf_counter()
            finished = threading.Event()
            limit_s = min(check.limit_s, self.ctx.budget_s - elapsed + 15)  # the whole run ends near its budget
            threading.Thread(target=self._watchdog, args=(check, t0, finished, limit_s), daemon=True).start()
            notes: list[str] = []
            status, figures, reason, tb = "ok", None, "", None
            try:
                with _captured_warnings(notes):
                    figures = check.fn(self.ctx)
            except Skip as why:
                status, reason = "skipped", str(why)
            except Exception as err:  # noqa: BLE001 - every failure is recorded, the next check runs
                status, reason, tb = "failed", _one_line(err), _tb_tail(err)
                figures = self.ctx.shared.pop("figures_on_failure", None)
                bad = [n for n in check.needs if n in failed_names]
                if bad:
                    reason += f" (after {', '.join(bad)} failed)"
            finally:
                finished.set()
                self.ctx.shared.pop("watch_log", None)
            if status == "failed":
                failed_names.add(check.name)
            with self.lock:
                if self.done:
                    return 1
                uniq = list(dict.fromkeys(n[:240] for n in notes))[:6]
                self.record(check, status, time.perf_counter() - t0, figures, reason, tb, uniq)
            if self.ctx.cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
        with self.lock:
            self.done = True
        return 1 if failed_names else 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(payload: dict[str, Any]) -> None:
    rows = []
    for r in payload["checks"]:
        detail = r.get("reason") or r.get("error") or ""
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in (r.get("figures") or {}).items())
        rows.append(
            (r["name"], r["status"], f"{r['seconds']:.1f}", (detail + ("; " if detail and figs else "") + figs))
        )
    title = f"GPU check on {payload['gpu'] or payload['device']}: {payload['summary']}"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in ("check", "status", "s", "figures / reason"):
            table.add_column(col, overflow="fold")
        colour = {"ok": "green", "failed": "red", "skipped": "yellow"}
        for name, status, secs, text in rows:
            table.add_row(name, f"[{colour[status]}]{status}[/]", secs, text)
        Console(width=max(140, shutil.get_terminal_size((140, 20)).columns)).print(table)
    except ImportError:
        print(title)
        for name, status, secs, text in rows:
            print(f"{name:24} {status:8} {secs:>6}  {text}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpu_check", description="Run every CUDA path of the project once; write one JSON."
    )
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_CHECK_OUT", DEFAULT_OUT)), help="JSON path")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("GPU_CHECK_BUDGET_S", 450)),
        help="wall-clock budget: checks that would start after it are skipped (default 450)",
    )
    ap.add_argument("--only", default="", help="comma-separated check names (the CPU-side checks always run)")
    ap.add_argument(
        "--device", default="cuda", help="cuda, cuda:N, or cpu to dry-run the harness (CUDA checks then skip)"
    )
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (run folders, corpus)")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for c in CHECKS:
            summary = c.fn.__doc__.strip().splitlines()[0] if c.fn.__doc__ else ""
            print(f"{c.name:24} {'CUDA' if c.needs_cuda else 'any '}  {summary}")
        return 0
    checks = CHECKS
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - {c.name for c in CHECKS}
        if unknown:
            print(f"gpu_check: unknown check(s) {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
            return 2
        checks = [c for c in CHECKS if not c.needs_cuda or c.name in wanted]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")  # every CUDA check then records why it was skipped
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    os.environ.setdefault("AUTONAS_CACHE", str(work / "cache"))  # never the user's token cache
    ctx = Context(device=device, work=work, budget_s=args.budget_s)
    runner = Runner(ctx, args.out.resolve(), checks)
    print(f"[gpu_check] device {device}, budget {args.budget_s:.0f} s, writing {runner.out}", flush=True)
    try:
        code = runner.run()
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print_table(runner.payload())
    print(f"[gpu_check] wrote {runner.out}", flush=True)
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # leave without waiting for threads a hung library may have left behind
