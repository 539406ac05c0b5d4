"""Compress a trained model: prune (optional), recover with a short fine-tune (optional), INT8 (optional).

Reads a run folder (``arch.json``, ``model.safetensors``, ``run.json`` for its corpus and tokenizer) and
never writes into it. Writes an output folder with the compressed model (``model.safetensors`` fp32
with its zeros, ``model_int8.safetensors`` with ``--int8``), ``arch.json``, the tokenizer, and a flat
``metrics.json`` (through ``harness.run_files``): val bpb before / after each stage on the same validation
bytes, sizes on disk, sparsity, parameters and batch-1 decode latency before and after; and ``log.txt``, one
line per stage, as every worker writes. Each deployment runtime (:mod:`kernels.runtimes`: PyTorch, ONNX Runtime,
CTranslate2, whose conversions stay in ``ct2_fp32/`` / ``ct2_int8/``) is scored on the check window and timed, and
the fastest within the bpb tolerance is named ``deploy_cpu_runtime``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_model, save_model

from distill.losses import KDLossConfig, kd_loss_full
from harness.budget import Budget
from harness.data import CorpusSpec, TokenizedCorpus, prepare_corpus
from harness.errors import UserError
from harness.metrics import CachedLanguageModel, evaluate_bpb, measure_latency
from harness.run_files import EVAL_BYTES, append_log, outcome_fail_reason, write_metrics
from kernels import ct2_runtime
from kernels.onnx_export import OnnxDecoder, check_against_torch, export_decode_step, quantize_onnx_int8
from kernels.prune import (
    SEMI_STRUCTURED_DTYPE,
    PruneSpec,
    densify_semi_structured,
    input_norms,
    prune_attention_heads,
    prune_ffn_channels,
    prune_semi_structured_24,
    prune_unstructured,
    require_semi_structured_device,
)
from kernels.quant import for_runtime, int8_summary, load_int8, save_int8
from kernels.runtimes import RuntimeFigures, RuntimeSources, choose_runtime, measure, parse_runtimes
from nas.hf import export_blockers, export_hf
from nas.model import CodeLM, build_model
from nas.run_folder import load_trained_model
from nas.train import LossFn, TrainConfig, Trainer


class CompressConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    int8: bool = False
    int8_backend: str = Field("cpu", pattern="^(cpu|cuda|reference)$")
    prune: str | None = None  # magnitude:0.5 | wanda:0.5 | ffn:0.5 | 2:4
    recover_s: float | None = Field(None, gt=0)
    recover_tokens: int | None = Field(None, gt=0)
    recover_lr: float = Field(1e-3, gt=0)
    recover_distill: bool = False  # recover with KD from the unpruned model (forward KL, half CE)
    calib_batches: int = Field(8, ge=1)
    eval_bytes: int = Field(EVAL_BYTES, gt=0)
    seed: int = 0
    measure_latency: bool = True
    onnx: bool = False  # also export the decode step to ONNX (fp32, and int8 with int8) and check it
    # deployment runtimes measured and chosen from (kernels.runtimes names); None: PyTorch, ONNX with --onnx,
    # CTranslate2 where it is installed and the model has a Hugging Face export, int8 variants with --int8
    runtimes: tuple[str, ...] | None = None
    runtime_tolerance_pct: float = Field(1.0, ge=0)  # check-window bpb change from PyTorch fp32 a runtime may have
    runtime_threads: int | None = Field(None, ge=1)  # intra-op threads the runtimes are timed at (None: torch's)

    @classmethod
    def with_recovery(cls, recover: Budget | None, **kw: Any) -> CompressConfig:
        return cls(
            recover_s=recover.seconds if recover else None, recover_tokens=recover.tokens if recover else None, **kw
        )


def load_run(model_dir: Path) -> tuple[CodeLM, CorpusSpec, str]:
    """The trained model of a run folder and the corpus / tokenizer it was trained with."""
    d = Path(model_dir)
    model, _ = load_trained_model(d)
    spec, tokenizer = CorpusSpec(), "byte"
    if (d / "run.json").is_file():
        run = json.loads((d / "run.json").read_text())
        spec = CorpusSpec(**run.get("corpus", {}))
        tokenizer = run.get("tokenizer", "byte")
    if (d / "tokenizer.json").is_file():
        tokenizer = f"file:{(d / 'tokenizer.json').resolve()}"
    return model.eval(), spec, tokenizer


def _bpb(
    model: torch.nn.Module,
    corpus: TokenizedCorpus,
    cfg: CompressConfig,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> float:
    lm = _as_language_model(model)
    return evaluate_bpb(lm, corpus["val"], corpus.token_bytes, cfg.eval_bytes, 16, device, autocast_dtype).bpb


def _latency(model: torch.nn.Module) -> float:
    """The decode latency reported as ``latency_ms_p50``."""
    return measure_latency(_as_language_model(model)).decode_ms_p50


def _as_language_model(model: torch.nn.Module) -> CachedLanguageModel:
    """Every model here is a CodeLM, pruned or quantized in place or as a copy, so it keeps CodeLM's ``arch``,
    forward and ``new_cache``; ``nn.Module`` as a static type cannot say so."""
    return cast(CachedLanguageModel, model)


def compress(model_dir: Path, out: Path, cfg: CompressConfig, log_to_console: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = PruneSpec.parse(cfg.prune) if cfg.prune else None
    if spec is not None and spec.method == "2:4" and not torch.cuda.is_available():
        require_semi_structured_device()
    if not cfg.int8 and spec is None:
        raise UserError("nothing to do: give --int8 and/or --prune")
    model, corpus_spec, tokenizer = load_run(model_dir)
    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise UserError("--out must differ from the source model folder (the source is never modified)")
    out.mkdir(parents=True, exist_ok=True)
    append_log(
        out,
        f"compress {Path(model_dir).resolve()}: prune {cfg.prune or '-'}, "
        f"recover {cfg.recover_s or cfg.recover_tokens or '-'}, "
        f"int8 {cfg.int8} ({cfg.int8_backend}), eval bytes {cfg.eval_bytes}",
    )
    corpus = prepare_corpus(corpus_spec, tokenizer)
    m: dict[str, Any] = {
        "status": "ok",
        "kind": "compress",
        "source": str(Path(model_dir).resolve()),
        "params_before": sum(p.numel() for p in model.parameters()),
        "size_bytes_on_disk_fp32_before": (Path(model_dir) / "model.safetensors").stat().st_size,
        "eval_bytes": cfg.eval_bytes,
        "seed": cfg.seed,
    }
    m["val_bpb_before"] = _bpb(model, corpus, cfg)
    append_log(out, f"before: val bpb {m['val_bpb_before']:.4f}, {m['params_before']} parameters")
    if cfg.measure_latency:
        m["latency_ms_p50_before"] = _latency(model)
    if spec is not None:
        teacher = copy.deepcopy(model) if cfg.recover_distill else None
        m["prune_method"], m["prune_sparsity_target"] = spec.method, spec.sparsity
        norms = (
            input_norms(model, corpus["train"], cfg.calib_batches, seed=cfg.seed)
            if spec.method in ("wanda", "ffn", "heads")
            else None
        )
        if spec.method == "ffn":
            model = prune_ffn_channels(model, spec.sparsity, norms)
            m["prune_sparsity"] = round(
                1 - model.arch.d_ff / json.loads((Path(model_dir) / "arch.json").read_text())["d_ff"], 4
            )
        elif spec.method == "heads":
            before_heads = model.arch.n_heads
            model = prune_attention_heads(model, spec.sparsity, norms)
            m["prune_sparsity"] = round(1 - model.arch.n_heads / before_heads, 4)
        elif spec.method in ("magnitude", "wanda"):
            m["prune_sparsity"] = round(prune_unstructured(model, spec.method, spec.sparsity, norms), 4)
        else:
            model = model.cuda()
            prune_semi_structured_24(model)
            m["prune_sparsity"] = 0.5
        if spec.method == "2:4":  # the sparse matmuls take fp16 activations only (see SEMI_STRUCTURED_DTYPE)
            m["val_bpb_pruned"] = _bpb(model, corpus, cfg, "cuda", SEMI_STRUCTURED_DTYPE)
            m["val_bpb_pruned_autocast"] = str(SEMI_STRUCTURED_DTYPE).removeprefix("torch.")
            densify_semi_structured(model)  # saving, recovery and int8 work on the dense weights with the zeros
        else:
            m["val_bpb_pruned"] = _bpb(model, corpus, cfg)
        append_log(out, f"pruned {spec.method} to sparsity {m['prune_sparsity']}: val bpb {m['val_bpb_pruned']:.4f}")
        if cfg.recover_s or cfg.recover_tokens:
            model = _recover(
                model,
                corpus,
                corpus_spec,
                tokenizer,
                cfg,
                out,
                keep_zeros=spec.method in ("magnitude", "wanda", "2:4"),
                log_to_console=log_to_console,
                teacher=teacher,
            )
            m["recover_distill"] = cfg.recover_distill
            m["val_bpb_recovered"] = _bpb(model, corpus, cfg)
            append_log(out, f"recovered (log in {out / 'recover'}): val bpb {m['val_bpb_recovered']:.4f}")
    m["params"] = sum(p.numel() for p in model.parameters())
    save_model(model, str(out / "model.safetensors"))
    (out / "arch.json").write_text(model.arch.to_json())
    if (Path(model_dir) / "tokenizer.json").is_file():
        shutil.copyfile(Path(model_dir) / "tokenizer.json", out / "tokenizer.json")
    m["size_bytes_on_disk_fp32"] = (out / "model.safetensors").stat().st_size
    m.update(_hf_export(model, out, corpus))
    final: torch.nn.Module = model
    if cfg.int8:
        m.update(int8_summary(save_int8(model, out)))
        reference = load_int8(out)
        m["val_bpb_int8_weights"] = _bpb(reference, corpus, cfg)  # weight rounding alone
        final = for_runtime(reference, cfg.int8_backend)  # type: ignore[arg-type]
        m["int8_backend"] = cfg.int8_backend
        append_log(out, f"int8 weights: val bpb {m['val_bpb_int8_weights']:.4f}")
    m["val_bpb"] = _bpb(final, corpus, cfg, "cuda" if cfg.int8_backend == "cuda" and cfg.int8 else "cpu")
    m["val_bpb_change_pct"] = round(100 * (m["val_bpb"] - m["val_bpb_before"]) / m["val_bpb_before"], 3)
    if cfg.measure_latency and next(final.parameters(), torch.zeros(0)).device.type == "cpu":
        m["latency_ms_p50"] = _latency(final)
        m["latency_speedup"] = round(m["latency_ms_p50_before"] / m["latency_ms_p50"], 3)
    if cfg.onnx:
        m.update(_onnx(model, out, corpus, cfg))
    figures = _measure_runtimes(model, out, corpus, cfg, m, progress=log_to_console)
    m.update(choose_cpu_deployment(figures, cfg.runtime_tolerance_pct))
    m["wall_s"] = round(time.perf_counter() - t0, 3)
    m = write_metrics(out, m).flat()
    append_log(
        out,
        f"finished: val bpb {m['val_bpb_before']:.4f} -> {m['val_bpb']:.4f} ({m['val_bpb_change_pct']:+.2f}%), "
        f"{m['params']} parameters, {m['wall_s']:.1f} s",
    )
    return m


def _hf_export(model: CodeLM, out: Path, corpus: TokenizedCorpus) -> dict[str, Any]:
    """The compressed model (fp32 weights, pruned shape and zeros included) as a Hugging Face Llama folder ``hf/``,
    where the architecture has an exact Llama equivalent; otherwise the reason is recorded."""
    blockers = export_blockers(model.arch)
    if blockers:
        return {"hf_export": "not exportable: " + "; ".join(blockers)}
    export_hf(model, out / "hf", corpus.tokenizer)
    return {"hf_export": "hf"}


def default_runtimes(cfg: CompressConfig, hf_exported: bool) -> tuple[str, ...]:
    """The runtimes measured when ``--runtimes`` is not given: PyTorch, ONNX Runtime with ``--onnx``, CTranslate2
    where it is installed and the model has a Hugging Face export; the INT8 variants with ``--int8``."""
    ct2 = hf_exported and ct2_runtime.available() is None
    names = ["torch"] + (["onnx"] if cfg.onnx else []) + (["ct2"] if ct2 else [])
    picked = parse_runtimes(",".join(names))
    return tuple(r for r in picked if cfg.int8 or not r.endswith("_int8"))


def _measure_runtimes(
    model: CodeLM, out: Path, corpus: TokenizedCorpus, cfg: CompressConfig, m: dict[str, Any], progress: bool = False
) -> list[RuntimeFigures]:
    """Each deployment runtime prepared into ``out`` (ONNX graphs, ``ct2_*/`` folders) and scored on the check
    window; timed too when latency is measured."""
    hf = out / "hf"
    src = RuntimeSources(
        model=model,
        out=out,
        int8_dir=out if cfg.int8 else None,
        hf_dir=hf if m.get("hf_export") == "hf" else None,
        hf_blocker=None if m.get("hf_export") == "hf" else str(m.get("hf_export")),
    )
    names = cfg.runtimes if cfg.runtimes is not None else default_runtimes(cfg, src.hf_dir is not None)
    window = np.asarray(corpus["val"][: model.arch.context_length], dtype=np.int64)
    figures = measure(
        names,
        src,
        window,
        corpus.token_bytes,
        threads=cfg.runtime_threads,
        timed=cfg.measure_latency,
        progress=progress,
    )
    for f in figures:
        append_log(
            out,
            f"runtime {f.name}: "
            + (
                f"skipped ({f.skipped})"
                if f.skipped
                else f"check bpb {f.check_bpb:.4f}"
                + (f", {f.ms_p50:.3f} ms/token p50 at {f.threads} thread(s)" if f.ms_p50 is not None else "")
            ),
        )
    return figures


def choose_cpu_deployment(figures: list[RuntimeFigures], tolerance_pct: float = 1.0) -> dict[str, Any]:
    """The per-runtime figures and the fastest CPU runtime whose check-window bpb is within ``tolerance_pct``
    percent of PyTorch fp32's, as flat metrics (``deploy_cpu_runtime``, ``latency_ms_p50_deploy_cpu``, and
    ``runtime_<name>_*``); see :func:`kernels.runtimes.choose_runtime`."""
    return choose_runtime(figures, tolerance_pct).flat()


def _onnx(model: CodeLM, out: Path, corpus: TokenizedCorpus, cfg: CompressConfig) -> dict[str, Any]:
    """Export the decode step, quantize it with onnxruntime when INT8 was asked, score and time both."""
    paths = {"onnx": export_decode_step(model, out)}
    if cfg.int8:
        paths["onnx_int8"] = quantize_onnx_int8(paths["onnx"])
    decoders = {name: OnnxDecoder(p, model, torch.get_num_threads()) for name, p in paths.items()}
    m: dict[str, Any] = {f"size_bytes_on_disk_{name}": p.stat().st_size for name, p in paths.items()}
    m.update(
        {
            f"onnx_check_{k}": v
            for k, v in check_against_torch(model, decoders, corpus["val"], corpus.token_bytes).items()
        }
    )
    if cfg.measure_latency:
        for name, dec in decoders.items():
            m[f"latency_ms_p50_{name}"] = dec.decode_latency_ms()["latency_ms_p50"]
    return m


def distill_loss_from(teacher: CodeLM, ce_weight: float = 0.5) -> LossFn:
    """Cross-entropy mixed with forward KL to ``teacher`` at temperature 1: the distillation trainer's loss
    (:func:`distill.losses.kd_loss_full`, the fused Triton kernel where Triton runs), not a copy of it."""
    cfg = KDLossConfig(kind="fkl", temperature=1.0, ce_weight=ce_weight)
    teacher.eval()

    def loss(logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(inputs)
        return kd_loss_full(logits, t_logits, targets, cfg)[0]

    return loss


def _recover(
    model: CodeLM,
    corpus: TokenizedCorpus,
    spec: CorpusSpec,
    tokenizer: str,
    cfg: CompressConfig,
    out: Path,
    keep_zeros: bool,
    log_to_console: bool,
    teacher: CodeLM | None = None,
) -> CodeLM:
    """A short fine-tune from the pruned weights (with KD from ``teacher`` when given); zeros stay zero
    for unstructured sparsity."""
    init = out / "pruned_init.safetensors"
    save_model(model, str(init))
    rec_dir = out / "recover"
    train = TrainConfig(
        budget_s=cfg.recover_s,
        budget_tokens=cfg.recover_tokens,
        lr=cfg.recover_lr,
        warmup_frac=0.0,
        seed=cfg.seed,
        device="cpu",
        eval_bytes=cfg.eval_bytes,
        measure_latency=False,
    )
    outcome = Trainer(
        model.arch,
        corpus,
        train,
        rec_dir,
        spec,
        tokenizer,
        log_to_console=log_to_console,
        init_weights=init,
        keep_zeros=keep_zeros,
        loss_fn=distill_loss_from(teacher) if teacher is not None else None,
        extra_record={"recover_from": str(init), "recover_distill": teacher is not None},
    ).run()
    if outcome.status != "ok":
        raise UserError(f"recovery fine-tune ended: {outcome.status} {outcome_fail_reason(outcome)}")
    recovered = build_model(model.arch)
    load_model(recovered, str(rec_dir / "model.safetensors"))
    return recovered.eval()
