"""Deployment runtimes behind one interface, and the rule that picks the one a model ships with.

A runtime is a way to decode a trained model batch-1 with its KV cache: PyTorch (fp32, or our per-channel INT8
through :mod:`kernels.quant`), ONNX Runtime (the exported decode step of :mod:`kernels.onnx_export`) and
CTranslate2 (:mod:`kernels.ct2_runtime`, a conversion of the Hugging Face export). Each one is prepared from
the model into an output folder (export or conversion; the folder stays loadable by a user), then loaded at a
thread count, and answers three questions the same way:

- ``greedy(prompt, n)``: the ``n`` tokens it picks after ``prompt`` (token ids in and out, no stop token);
- ``nll_nats(window)``: the negative log-likelihood of ``window[1:]``, so every runtime's bits per byte are
  measured on the same check window (the first context window of the validation split, as the ONNX check does);
- ``decode_ms(prompt_tokens, decode_tokens, repeats)``: per-token decode time after a prompt, p50 and p90.

The choice (:func:`choose_runtime`) is a pure function of the measurements: the fastest runtime whose check-window
bpb is within ``tolerance_pct`` of PyTorch fp32's (the reference, always eligible). It is kept apart from the
measuring so that it can be tested on given figures.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from harness.cli_support import err_console
from harness.errors import UserError
from kernels.latency import cpu_threads, measure_decode
from kernels.onnx_export import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    OnnxDecoder,
    export_decode_step,
    quantize_onnx_int8,
    torch_nll_nats,
)
from kernels.quant import for_runtime, load_int8
from nas.model import CodeLM

REFERENCE = "torch_fp32"
# every runtime by name, in the order tables show them; ``torch``, ``onnx`` and ``ct2`` name both precisions
RUNTIMES = ("torch_fp32", "torch_int8", "onnx_fp32", "onnx_int8", "ct2_fp32", "ct2_int8")
GROUPS = {"torch": ("torch_fp32", "torch_int8"), "onnx": ("onnx_fp32", "onnx_int8"), "ct2": ("ct2_fp32", "ct2_int8")}


def parse_runtimes(text: str, option: str = "--runtimes") -> tuple[str, ...]:
    """``"torch,ct2_int8"`` -> the runtime names, groups expanded, in table order; a wrong name is a UserError."""
    wanted: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in GROUPS:
            wanted.update(GROUPS[part])
        elif part in RUNTIMES:
            wanted.add(part)
        else:
            raise UserError(f"{option}: unknown runtime {part!r}: use {', '.join((*GROUPS, *RUNTIMES))}")
    if not wanted:
        raise UserError(f"{option} is empty: use a comma list of {', '.join((*GROUPS, *RUNTIMES))}")
    return tuple(r for r in RUNTIMES if r in wanted)


class Latency(BaseModel):
    """Per-token decode time after a prompt (the prefill excluded), over the timed repeats."""

    model_config = ConfigDict(frozen=True)

    ms_p50: float
    ms_p90: float


class Runtime(ABC):
    """One deployment runtime, loaded at a thread count (``threads``: intra-op threads of its CPU kernels)."""

    name: str
    threads: int

    @abstractmethod
    def greedy(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        """The ``new_tokens`` greedy tokens after ``prompt``, decoded with the KV cache, never stopping early."""

    @abstractmethod
    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        """Negative log-likelihood (nats) of ``tokens[1:]`` given their prefix, within one context window."""

    @abstractmethod
    def decode_ms(self, prompt_tokens: int = 32, decode_tokens: int = 128, repeats: int = 3) -> Latency:
        """Per-token decode time after a ``prompt_tokens`` prompt (one warm-up repeat not counted)."""

    def check_bpb(self, window: np.ndarray, token_bytes: np.ndarray) -> float:
        """Bits per byte on the check window: what the runtime makes of the model's quality."""
        nbytes = float(np.asarray(token_bytes)[np.asarray(window[1:], dtype=np.int64)].sum())
        return float(self.nll_nats(window).sum() / math.log(2) / nbytes)


class TorchRuntime(Runtime):
    """The model itself in PyTorch (fp32, or the INT8 model of ``kernels.quant.for_runtime``), eager cached decode."""

    def __init__(self, name: str, model: CodeLM, threads: int):
        self.name, self.model, self.threads = name, model.eval(), threads

    def greedy(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        with cpu_threads(self.threads):
            return self.model.generate(list(prompt), new_tokens, temperature=0.0).tokens

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        with cpu_threads(self.threads):
            return torch_nll_nats(self.model, tokens)

    def decode_ms(self, prompt_tokens: int = 32, decode_tokens: int = 128, repeats: int = 3) -> Latency:
        r = measure_decode(self.model, "eager", prompt_tokens, decode_tokens, 1, repeats, self.threads)
        return Latency(ms_p50=r.decode_ms_p50, ms_p90=r.decode_ms_p90)


class OnnxRuntime(Runtime):
    """The exported decode step run by onnxruntime (its public :class:`OnnxDecoder` methods only)."""

    def __init__(self, name: str, path: Path, model: CodeLM, threads: int):
        self.name, self.threads, self.model = name, threads, model
        self.decoder = OnnxDecoder(path, model, threads)

    def greedy(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        """Through the in-place cache (:meth:`OnnxDecoder.next_logits`), as the timed decode runs."""
        self.decoder.reset()
        logits = np.zeros(0)
        for token in prompt:
            logits = self.decoder.next_logits(int(token))
        out: list[int] = []
        while len(out) < new_tokens:
            out.append(int(np.argmax(logits)))
            if len(out) < new_tokens:
                logits = self.decoder.next_logits(out[-1])
        return out

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        return self.decoder.nll_nats(np.asarray(tokens, dtype=np.int64))

    def decode_ms(self, prompt_tokens: int = 32, decode_tokens: int = 128, repeats: int = 3) -> Latency:
        r = self.decoder.decode_latency_ms(prompt_tokens, decode_tokens, repeats)
        return Latency(ms_p50=r["latency_ms_p50"], ms_p90=r["latency_ms_p90"])


class RuntimeFigures(BaseModel):
    """What was measured of one runtime (or why it was not: ``skipped``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    threads: int | None = None
    ms_p50: float | None = None
    ms_p90: float | None = None
    check_bpb: float | None = None
    skipped: str | None = None

    def change_pct(self, reference_bpb: float) -> float | None:
        if self.check_bpb is None or not reference_bpb:
            return None
        return 100 * (self.check_bpb - reference_bpb) / reference_bpb


class RuntimeChoice(BaseModel):
    """The runtime a model ships with and the figures it was chosen from."""

    model_config = ConfigDict(frozen=True)

    runtime: str | None
    ms_p50: float | None
    tolerance_pct: float
    reference_bpb: float | None
    figures: tuple[RuntimeFigures, ...]

    def eligible(self, f: RuntimeFigures) -> bool:
        """Measured, and scores like the reference (the reference itself always does)."""
        if f.ms_p50 is None or f.skipped is not None:
            return False
        if f.name == REFERENCE:
            return True
        change = f.change_pct(self.reference_bpb) if self.reference_bpb is not None else None
        return change is not None and abs(change) <= self.tolerance_pct

    def flat(self) -> dict[str, float | int | str]:
        """metrics.json keys: ``runtime_<name>_{ms_p50,ms_p90,check_bpb,check_change_pct,threads,skipped}``, the
        tolerance, and the choice as ``deploy_cpu_runtime`` / ``latency_ms_p50_deploy_cpu`` (read elsewhere)."""
        m: dict[str, float | int | str] = {"runtime_tolerance_pct": self.tolerance_pct}
        for f in self.figures:
            for key in ("ms_p50", "ms_p90", "check_bpb", "threads", "skipped"):
                value = getattr(f, key)
                if value is not None:
                    m[f"runtime_{f.name}_{key}"] = value
            change = f.change_pct(self.reference_bpb) if self.reference_bpb is not None else None
            if change is not None:
                m[f"runtime_{f.name}_check_change_pct"] = round(change, 4)
        if self.runtime is not None and self.ms_p50 is not None:
            m["deploy_cpu_runtime"], m["latency_ms_p50_deploy_cpu"] = self.runtime, self.ms_p50
        return m


def choose_runtime(figures: Sequence[RuntimeFigures], tolerance_pct: float = 1.0) -> RuntimeChoice:
    """The fastest (lowest p50 ms/token) runtime whose check-window bpb is within ``tolerance_pct`` percent of
    PyTorch fp32's. Without a PyTorch fp32 check figure no runtime can be checked, so none is chosen."""
    if tolerance_pct < 0:
        raise UserError(f"the runtime tolerance must be at least 0 %, got {tolerance_pct}")
    ref = next((f for f in figures if f.name == REFERENCE and f.check_bpb is not None), None)
    choice = RuntimeChoice(
        runtime=None,
        ms_p50=None,
        tolerance_pct=tolerance_pct,
        reference_bpb=ref.check_bpb if ref else None,
        figures=tuple(figures),
    )
    eligible = [f for f in figures if choice.eligible(f)] if ref else []
    if not eligible:
        return choice
    best = min(eligible, key=lambda f: (f.ms_p50, RUNTIMES.index(f.name) if f.name in RUNTIMES else 99))
    return choice.model_copy(update={"runtime": best.name, "ms_p50": best.ms_p50})


class RuntimeSources(BaseModel):
    """Where each runtime's model comes from: the fp32 model, its INT8 folder (``model_int8.safetensors``), the
    Hugging Face export ``hf/`` (CTranslate2 converts it) and the folder the exports and conversions go to."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: CodeLM
    out: Path
    int8_dir: Path | None = None
    hf_dir: Path | None = None
    hf_blocker: str | None = None  # why there is no Hugging Face export (no CTranslate2 then)


def prepare(name: str, src: RuntimeSources) -> Path | str:
    """Write what ``name`` loads into ``src.out`` (an ONNX graph, a CTranslate2 folder) unless it is there
    already; returns its path, or the reason the runtime cannot run this model (a string: recorded, no error)."""
    if name == "torch_fp32":
        return src.out
    if name == "torch_int8":
        return src.int8_dir if src.int8_dir is not None else "no INT8 weights (compress with --int8)"
    if name.startswith("onnx_"):
        fp32 = src.out / ONNX_FILE
        if not fp32.is_file():
            export_decode_step(src.model, src.out)
        if name == "onnx_fp32":
            return fp32
        int8 = src.out / ONNX_INT8_FILE
        return int8 if int8.is_file() else quantize_onnx_int8(fp32)
    if name.startswith("ct2_"):
        # imported here, not at the top: kernels.ct2_runtime builds on this module (a cycle at import time)
        from kernels.ct2_runtime import convert

        if src.hf_dir is None:
            return src.hf_blocker or "no Hugging Face export"
        return convert(src.hf_dir, src.out / name, name.removeprefix("ct2_"))
    raise UserError(f"unknown runtime {name!r}: use {', '.join(RUNTIMES)}")


def load(name: str, path: Path, src: RuntimeSources, threads: int, device: str = "cpu") -> Runtime:
    """The runtime ``name`` from what :func:`prepare` wrote, at ``threads`` intra-op threads."""
    if name == "torch_fp32":
        return TorchRuntime(name, src.model, threads)
    if name == "torch_int8":
        return TorchRuntime(name, for_runtime(load_int8(path), "cpu"), threads)  # type: ignore[arg-type]
    if name.startswith("onnx_"):
        return OnnxRuntime(name, path, src.model, threads)
    if name.startswith("ct2_"):
        from kernels.ct2_runtime import Ct2Runtime  # here, not at the top: it builds on this module

        return Ct2Runtime(name, path, threads, device)
    raise UserError(f"unknown runtime {name!r}: use {', '.join(RUNTIMES)}")


def measure(
    names: Sequence[str],
    src: RuntimeSources,
    window: np.ndarray,
    token_bytes: np.ndarray,
    threads: int | None = None,
    prompt_tokens: int = 32,
    decode_tokens: int = 128,
    repeats: int = 3,
    timed: bool = True,
    progress: bool = False,
) -> list[RuntimeFigures]:
    """Prepare, load and measure each runtime (check-window bpb always, ms/token when ``timed``)."""
    n = threads or torch.get_num_threads()
    ctx = src.model.arch.context_length
    prompt_tokens = max(1, min(prompt_tokens, ctx - 2))
    decode_tokens = max(2, min(decode_tokens, ctx - prompt_tokens))
    out = []
    for name in names:
        if progress:
            err_console.print(f"runtime {name}: preparing and measuring at {n} thread(s)", highlight=False)
        where = prepare(name, src)
        if isinstance(where, str):
            out.append(RuntimeFigures(name=name, skipped=where))
            continue
        rt = load(name, where, src, n)
        lat = rt.decode_ms(prompt_tokens, decode_tokens, repeats) if timed else None
        out.append(
            RuntimeFigures(
                name=name,
                threads=n,
                ms_p50=lat.ms_p50 if lat else None,
                ms_p90=lat.ms_p90 if lat else None,
                check_bpb=rt.check_bpb(window, token_bytes),
            )
        )
    return out


@contextmanager
def scratch_dir(prefix: str = "autonas-runtimes-") -> Iterator[Path]:
    """A folder for exports that must not land in a run folder (``autonas latency`` reads, never writes, there)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def percentiles(values: Sequence[float]) -> Latency:
    s = sorted(values) or [0.0]
    return Latency(ms_p50=statistics.median(s), ms_p90=s[int(0.9 * (len(s) - 1))])


def figures_from_metrics(m: dict[str, object]) -> list[RuntimeFigures]:
    """The per-runtime figures back from flat metrics (``RuntimeChoice.flat`` wrote them), in table order."""
    out = []
    for name in RUNTIMES:
        fields = {k: m[f"runtime_{name}_{k}"] for k in RuntimeFigures.model_fields if f"runtime_{name}_{k}" in m}
        if fields:
            out.append(RuntimeFigures.model_validate({**fields, "name": name}))
    return out
