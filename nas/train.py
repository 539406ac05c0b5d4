"""The trainer: one architecture, one budget, honest measurements, resumable after any kill.

Budgets are wall-clock seconds of training or a token count (whichever ends first); the learning-rate
schedule (linear warm-up, cosine decay to ``min_lr_ratio``) follows the fraction of the budget spent, so
a time budget needs no step count known in advance. A token budget gives the same number on a loaded
machine as on an idle one; ``max_seconds`` is a separate hard wall-clock cap (counted from the trainer's
creation, or ``Trainer.started``) that ends a run before its budget: such a run is ``capped``, a partial
result that is not evaluated and never compared with finished ones. ``metrics.json`` says what ended the
training (``stopped_by``: tokens, time, wall_cap or diverged). A run folder holds ``run.json`` (what was
asked), ``log.txt``, ``ckpt/`` while it runs, and at the end ``model.safetensors``, ``metrics.json`` and
``arch.json``. ``metrics.json`` is written last, atomically: its presence means the run finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_model, save_model

from harness.budget import Budget
from harness.data import CorpusSpec, TokenizedCorpus
from harness.errors import UserError
from harness.metrics import evaluate_bpb, measure_latency, peak_memory_mb
from harness.run_files import EVAL_BYTES, METRICS_FILE, append_log, write_metrics
from nas.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from nas.counting import arch_metrics
from nas.model import CodeLM, build_model
from nas.space import ArchConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, inputs, targets) -> loss


class TrainConfig(BaseModel):
    """Everything about a training run except the architecture and the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_s: float | None = Field(None, gt=0, description="seconds of training (excluding eval/checkpoints)")
    budget_tokens: int | None = Field(None, gt=0, description="tokens of training, rounded up to whole optimizer steps")
    max_seconds: float | None = Field(
        None, gt=0, description="hard wall-clock cap: training stops here even before its budget"
    )
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    eval_bytes: int | None = Field(EVAL_BYTES, gt=0, description="bytes of val text scored (None: all)")
    eval_batch_size: int = Field(16, ge=1)
    checkpoint_every_s: float = Field(60.0, gt=0)
    log_every: int = Field(10, ge=1)
    divergence_factor: float = Field(4.0, gt=1, description="loss above factor x first loss = diverged")
    measure_latency: bool = True

    @model_validator(mode="after")
    def _has_budget(self) -> TrainConfig:
        if self.budget_s is None and self.budget_tokens is None:
            raise ValueError("a budget is required: budget_s and/or budget_tokens")
        return self

    @classmethod
    def from_budget(cls, budget: Budget, **kwargs: Any) -> TrainConfig:
        return cls(budget_s=budget.seconds, budget_tokens=budget.tokens, **kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def lr_multiplier(progress: float, warmup_frac: float, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to ``min_ratio``, as a function of budget fraction spent."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup_frac > 0 and progress < warmup_frac:
        return max(progress / warmup_frac, 0.01)
    span = 1.0 - warmup_frac
    t = (progress - warmup_frac) / span if span > 0 else 1.0
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class BatchSampler:
    """Random training windows from the token memmap; its state is saved with each checkpoint."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int):
        if tokens.size < context + 2:
            raise UserError(f"train split has {tokens.size} tokens: fewer than one context window ({context + 1})")
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.offsets = np.arange(context + 1, dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.tokens.size - self.context - 1, size=self.batch_size)
        window = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def build_optimizer(model: CodeLM, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm weights are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


@dataclass
class TrainOutcome:
    status: str  # ok | diverged | capped | interrupted
    metrics: dict[str, Any]
    fail_reason: str = ""  # metrics.json's word (harness.run_files)


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and leaves at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def prepare_run_dir(out: Path, overwrite: bool = False) -> None:
    """Create (or check) the run folder; refuse to clobber a finished run or an unwritable place."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    if (out / METRICS_FILE).exists() and not overwrite:
        raise UserError(
            f"{out} already holds a finished run ({METRICS_FILE}); choose another --out or pass --overwrite"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output folder {out} is not writable: {err.strerror or err}") from None
    if overwrite:
        for name in (METRICS_FILE, "model.safetensors", "log.txt"):
            (out / name).unlink(missing_ok=True)
        for name in ("ckpt", "ckpt.old", "ckpt.tmp"):
            shutil.rmtree(out / name, ignore_errors=True)


class Trainer:
    """Trains ``arch`` on ``corpus`` into ``out``; call :meth:`run`."""

    def __init__(
        self,
        arch: ArchConfig,
        corpus: TokenizedCorpus,
        cfg: TrainConfig,
        out: Path,
        corpus_spec: CorpusSpec | None = None,
        tokenizer_name: str = "byte",
        log_to_console: bool = True,
        loss_fn: LossFn | None = None,
        extra_record: dict[str, Any] | None = None,
        extra_metrics: Callable[[], dict[str, Any]] | None = None,
        init_weights: Path | None = None,
        keep_zeros: bool = False,
    ):
        """``loss_fn(logits, inputs, targets)`` replaces next-token cross-entropy (distillation uses it);
        ``extra_record`` joins run.json (and must match on resume); ``extra_metrics()`` joins metrics.json.
        ``init_weights`` (safetensors) starts from a trained model instead of a fresh one (fine-tuning,
        recovery after pruning); ``keep_zeros`` keeps every zero weight of a matrix at zero through
        training (sparsity survives the fine-tune and a resume, since the mask is read off the weights)."""
        if arch.vocab_size != corpus.vocab_size:
            raise UserError(
                f"arch vocab_size {arch.vocab_size} does not match the tokenizer's {corpus.vocab_size} "
                f"({corpus.tokenizer.name}); set vocab_size to {corpus.vocab_size} or pick another tokenizer"
            )
        self.arch, self.corpus, self.cfg, self.out = arch, corpus, cfg, Path(out)
        self.corpus_spec = corpus_spec or CorpusSpec()
        self.tokenizer_name = tokenizer_name
        self.log_to_console = log_to_console
        self.loss_fn, self.extra_record, self.extra_metrics = loss_fn, extra_record or {}, extra_metrics
        self.init_weights, self.keep_zeros = init_weights, keep_zeros
        self.started = time.monotonic()  # the wall cap counts from here; a command may set it to its own start
        self.device = resolve_device(cfg.device)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

    # -- bookkeeping --------------------------------------------------------------------------------

    def _run_record(self) -> dict[str, Any]:
        return {
            "arch": self.arch.model_dump(),
            "train": self.cfg.model_dump(),
            "corpus": self.corpus_spec.model_dump(),
            "tokenizer": self.tokenizer_name,
            "corpus_fingerprint": self.corpus.corpus_fingerprint,
            **self.extra_record,
        }

    def _check_same_run(self) -> None:
        path = self.out / "run.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        mine = self._run_record()
        for key in ("arch", "corpus_fingerprint", "tokenizer", *self.extra_record):
            if saved.get(key) != mine.get(key):
                raise UserError(
                    f"{self.out} holds a checkpoint of a different run ({key} differs); choose another --out"
                )

    def _log(self, line: str) -> None:
        append_log(self.out, line)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        cfg, device = self.cfg, self.device
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        model = build_model(self.arch, seed=cfg.seed).to(device)
        opt = build_optimizer(model, cfg, device)
        sampler = BatchSampler(self.corpus["train"], self.arch.context_length, cfg.batch_size, cfg.seed)
        state: dict[str, Any] = {
            "step": 0,
            "tokens": 0,
            "train_s": 0.0,
            "wall_s": 0.0,
            "first_loss": None,
            "resumed_from_step": 0,
        }
        ckpt = find_checkpoint(self.out)
        if ckpt is not None:
            self._check_same_run()
            state = load_checkpoint(ckpt, model, opt)
            sampler.restore(state.pop("sampler"))
            state["resumed_from_step"] = state["step"]
            self._log(f"resumed from {ckpt.name} at step {state['step']} ({state['tokens']} tokens)")
        else:
            if self.init_weights is not None:
                load_model(model, str(self.init_weights), device=str(device))
            _write_json_atomic(self.out / "run.json", self._run_record())
            (self.out / "arch.json").write_text(self.arch.to_json())
            tok_path = getattr(self.corpus.tokenizer, "path", None)
            if tok_path is not None:  # a run folder is self-contained: its model is usable without the cache
                shutil.copyfile(tok_path, self.out / "tokenizer.json")
            self._log(
                f"start {self.arch.describe()} on {device},"
                f" budget {cfg.budget_s or '-'} s / {cfg.budget_tokens or '-'} tokens"
            )
        masks = (
            [(p, p != 0) for p in model.parameters() if p.dim() == 2 and bool((p == 0).any())]
            if self.keep_zeros
            else []
        )
        step_fn = torch.compile(model) if cfg.compile else model
        compile_s = 0.0
        if cfg.compile:  # compile outside the budget's clock, on a batch that does not touch the data order
            t_compile = time.perf_counter()
            warm = torch.zeros(cfg.batch_size, self.arch.context_length, dtype=torch.long, device=device)
            with torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext():
                step_fn(warm).float().mean().backward()
            opt.zero_grad(set_to_none=True)
            compile_s = time.perf_counter() - t_compile
            self._log(f"torch.compile took {compile_s:.1f}s (not counted in the training budget)")
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.arch.context_length
        autocast = (
            (lambda: torch.autocast(device.type, dtype=self.autocast_dtype)) if self.autocast_dtype else nullcontext
        )
        status, reason = "ok", ""
        wall_start = time.perf_counter()
        last_ckpt = time.perf_counter()
        last_loss = float("nan")
        window_loss = torch.zeros((), device=device)
        window_steps = 0
        step_s = 0.0  # the last step's duration
        progress_bar = _Progress(self.log_to_console)

        def progress() -> float:
            p = 0.0
            if cfg.budget_s is not None:
                p = max(p, state["train_s"] / cfg.budget_s)
            if cfg.budget_tokens is not None:
                p = max(p, state["tokens"] / cfg.budget_tokens)
            return p

        def checkpoint() -> None:
            state["wall_s"] = wall_base + time.perf_counter() - wall_start
            save_checkpoint(self.out, model, opt, {**state, "sampler": sampler.state()})

        model.train()
        wall_base = state["wall_s"]
        with _StopRequest() as stop, progress_bar:
            while progress() < 1.0:
                # the cap is a deadline: a step that would end past it is not started
                if cfg.max_seconds is not None and time.monotonic() - self.started + step_s >= cfg.max_seconds:
                    status, reason = "capped", self._cap_reason(state)
                    break
                t0 = time.perf_counter()
                lr = cfg.lr * lr_multiplier(progress(), cfg.warmup_frac, cfg.min_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = lr
                for _ in range(cfg.grad_accum):
                    x, y = sampler.next()
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast():
                        logits = step_fn(x)
                    if self.loss_fn is None:
                        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
                    else:
                        loss = self.loss_fn(logits, x, y)
                    (loss / cfg.grad_accum).backward()
                    window_loss += loss.detach()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if masks:
                    with torch.no_grad():
                        for p, mask in masks:
                            p.mul_(mask)
                window_steps += 1
                state["step"] += 1
                state["tokens"] += tokens_per_step
                if window_steps == cfg.log_every or state["step"] == 1:
                    last_loss = float(window_loss) / (window_steps * cfg.grad_accum)
                    window_loss.zero_()
                    window_steps = 0
                    if state["first_loss"] is None:
                        state["first_loss"] = last_loss
                    if not math.isfinite(last_loss):
                        status, reason = "diverged", f"loss became {last_loss} at step {state['step']}"
                    elif last_loss > cfg.divergence_factor * state["first_loss"]:
                        status, reason = (
                            "diverged",
                            (
                                f"loss {last_loss:.3f} exceeded {cfg.divergence_factor:g}x the "
                                f"first loss {state['first_loss']:.3f} at step {state['step']}"
                            ),
                        )
                if device.type == "cuda" and window_steps == 0:
                    torch.cuda.synchronize(device)
                step_s = time.perf_counter() - t0
                state["train_s"] += step_s
                state["wall_s"] = wall_base + time.perf_counter() - wall_start
                if window_steps == 0:
                    tps = state["tokens"] / max(state["train_s"], 1e-9)
                    self._log(
                        f"step {state['step']} tokens {state['tokens']} loss {last_loss:.4f}"
                        f" lr {lr:.2e} tok/s {tps:.0f}"
                    )
                    progress_bar.update(progress(), state["step"], last_loss, tps)
                if status != "ok":
                    break
                if stop.signal is not None:
                    status, reason = "interrupted", f"stopped by signal {stop.signal} at step {state['step']}"
                    break
                if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s:
                    checkpoint()
                    last_ckpt = time.perf_counter()
            progress_bar.update(progress(), state["step"], last_loss, state["tokens"] / max(state["train_s"], 1e-9))
        state["wall_s"] = wall_base + time.perf_counter() - wall_start
        state["compile_s"] = round(compile_s, 3)
        if status == "interrupted":
            checkpoint()
            self._log(reason + "; checkpoint saved, run the same command again to resume")
            return TrainOutcome(status, {}, reason)
        return self._finish(model, state, status, reason, last_loss)

    def _cap_reason(self, state: dict[str, Any]) -> str:
        cfg = self.cfg
        done = (
            f"{state['tokens']:,} of {cfg.budget_tokens:,} tokens"
            if cfg.budget_tokens is not None
            else f"{state['train_s']:.1f} of {cfg.budget_s:g} s of training"
        )
        return (
            f"wall-clock cap of {cfg.max_seconds:g}s reached after {done}: a partial result, not compared with "
            "finished ones"
        )

    def _stopped_by(self, state: dict[str, Any], status: str) -> str:
        """What ended the training: tokens, time (the budget), wall_cap or diverged."""
        if status == "capped":
            return "wall_cap"
        if status != "ok":
            return status
        if self.cfg.budget_tokens is not None and state["tokens"] >= self.cfg.budget_tokens:
            return "tokens"
        return "time"

    def _finish(self, model: CodeLM, state: dict[str, Any], status: str, reason: str, last_loss: float) -> TrainOutcome:
        t_eval = time.perf_counter()
        metrics: dict[str, Any] = {"status": status, "fail_reason": reason, "kind": "train"}
        metrics.update(arch_metrics(self.arch))
        metrics.update(
            {
                "arch_hash": self.arch.short_hash(),
                "tokenizer": self.corpus.tokenizer.name,
                "vocab_size": self.arch.vocab_size,
                "context_length": self.arch.context_length,
                "device": str(self.device),
                "seed": self.cfg.seed,
                "steps": state["step"],
                "tokens_trained": state["tokens"],
                "stopped_by": self._stopped_by(state, status),
                "train_s": round(state["train_s"], 3),
                "tokens_per_s": round(state["tokens"] / max(state["train_s"], 1e-9), 1),
                "train_loss_first": state["first_loss"],
                "train_loss_last": last_loss,
                "resumed_from_step": state.get("resumed_from_step", 0),
                "compile_s": state.get("compile_s", 0.0),
            }
        )
        metrics.update(
            {
                k: v
                for k, v in (
                    ("budget_tokens", self.cfg.budget_tokens),
                    ("budget_s", self.cfg.budget_s),
                    ("max_seconds", self.cfg.max_seconds),
                )
                if v is not None
            }
        )
        if status == "ok":
            result = evaluate_bpb(
                model,
                self.corpus["val"],
                self.corpus.token_bytes,
                self.cfg.eval_bytes,
                self.cfg.eval_batch_size,
                self.device,
                self.autocast_dtype,
            )
            metrics.update(
                {
                    "val_bpb": result.bpb,
                    "val_loss_per_token": result.loss_per_token,
                    "val_tokens": result.tokens,
                    "val_bytes": result.bytes,
                    "eval_bytes": self.cfg.eval_bytes,
                }
            )
            save_model(model, str(self.out / "model.safetensors"))
            if self.cfg.measure_latency:
                metrics.update(measure_latency(model).as_metrics())
        if self.extra_metrics is not None:
            metrics.update(self.extra_metrics())
        metrics["eval_s"] = round(time.perf_counter() - t_eval, 3)
        metrics["wall_s"] = round(state["wall_s"] + metrics["eval_s"], 3)
        metrics["peak_mem_mb"] = round(peak_memory_mb(self.device), 1)
        # a diverged run's losses may be NaN: null in the file (the contract holds finite numbers only)
        metrics = {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in metrics.items()}
        metrics = write_metrics(self.out, metrics).flat()
        self._log(f"finished: status {status} {reason} val_bpb {metrics.get('val_bpb', float('nan')):.4f}")
        for name in ("ckpt", "ckpt.old"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        return TrainOutcome(status, metrics, reason)


class _Progress:
    """A rich progress bar on the console (silent when disabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Progress | None = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._bar = Progress(
                TextColumn("train"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=1.0, info="")
        return self

    def update(self, fraction: float, step: int, loss: float, tps: float) -> None:
        if self._bar is not None:
            self._bar.update(
                self._task, completed=min(fraction, 1.0), info=f"step {step} loss {loss:.3f} {tps:,.0f} tok/s"
            )

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
