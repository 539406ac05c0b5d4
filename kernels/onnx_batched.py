"""The decode step of :mod:`kernels.onnx_export` for several sequences at once: the graph a server batches with.

``decode_batched.onnx`` maps ``(input_ids [B, S], seqlens_k int32 [B], last int64 [B], past_key_i, past_value_i
[B, n_kv, C, hd] per layer)`` to ``(logits [B, V], present_key_i, present_value_i)``, with ``B`` and ``S`` free.
``seqlens_k[b]`` is row ``b``'s total length after this call minus one (onnxruntime's ``GroupQueryAttention``
contract), so each row writes its new keys and values at its own positions of a shared preallocated cache and attends
over its own filled part only; ``total_sequence_length`` (the longest row) is computed in the graph. Two uses, one
graph:

- decode: ``B`` rows, ``S = 1``, each at its own position (``seqlens_k = position``);
- prefill: one row, ``S`` prompt tokens padded to ``P`` from position 0 (``seqlens_k = P - 1``, ``last = S - 1``).

Logits come out for one token of each row only, the ``last[b]``-th of its new tokens (the head runs on ``B``
vectors, not ``B * S``). That lets a prompt be right-padded to a few lengths (powers of two): onnxruntime pays
~60 ms the first time it runs a shape it has not seen (measured on the ~10.7M model, int8, 1 thread: 60-75 ms against
15-18 ms for the same prefill once seen), so the decoder pads prompts to :func:`prefill_length` and runs every
shape once when it is built. The padding's keys land past the prompt, where decoding overwrites them before any
row reads them (a row at position ``p`` attends to ``0..p`` only).

:class:`BatchedOnnxDecoder` owns the cache ``[slots, n_kv, C, hd]`` per layer as numpy buffers and binds row views
of it as both past and present (IO binding: the cache is written in place, never copied in or out). Rows
``0..n-1`` decode together, so a row view is one contiguous block; whoever drives it keeps the live sequences in
the first rows (:meth:`BatchedOnnxDecoder.move_row` when one leaves). The INT8 twin is
:func:`kernels.onnx_export.quantize_onnx_int8` of this graph (8-bit ``MatMulNBits``, which takes any number of
rows).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import UserError
from kernels.onnx_export import _GroupQueryAttention, _norm, gqa_blocks, quantize_onnx_int8
from kernels.threads import DECODE_THREADS
from nas.model import CodeLM, apply_rope

BATCHED_FILE = "decode_batched.onnx"
BATCHED_INT8_FILE = "decode_batched_int8.onnx"


class _BatchedGroupQueryAttention(_GroupQueryAttention):
    """The same contrib node (``symbolic`` inherited), traced with ``B`` rows of ``S`` tokens.

    The PyTorch body is the operator's meaning for rows that all start at ``seqlens_k - S + 1``; it runs only while
    tracing the export.
    """

    @staticmethod
    def forward(
        ctx: object,
        q: torch.Tensor,  # [B, S, n_heads * hd]
        k: torch.Tensor,  # [B, S, n_kv * hd]
        v: torch.Tensor,
        past_k: torch.Tensor,  # [B, n_kv, C, hd]
        past_v: torch.Tensor,
        seqlens_k: torch.Tensor,  # int32 [B]: total length of each row after this call, minus one
        total_length: torch.Tensor,  # int32 []
        cos: torch.Tensor | None,  # [C, hd / 2], or None
        sin: torch.Tensor | None,
        n_heads: int,
        n_kv: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = q.shape
        hd = past_k.shape[-1]
        present_k, present_v = past_k.clone(), past_v.clone()
        out = []
        for row in range(b):
            end = int(seqlens_k[row]) + 1
            pos = torch.arange(end - s, end)
            qh = q[row].view(s, n_heads, hd).transpose(0, 1)[None]  # [1, H, S, hd]
            kh = k[row].view(s, n_kv, hd).transpose(0, 1)[None]
            if cos is not None and sin is not None:
                c, sn = cos[pos].repeat(1, 2), sin[pos].repeat(1, 2)  # [S, hd]
                qh, kh = apply_rope(qh, c, sn), apply_rope(kh, c, sn)
            present_k[row, :, end - s : end] = kh[0]
            present_v[row, :, end - s : end] = v[row].view(s, n_kv, hd).transpose(0, 1)
            rep = n_heads // n_kv
            keys = present_k[row : row + 1, :, :end].repeat_interleave(rep, dim=1)
            values = present_v[row : row + 1, :, :end].repeat_interleave(rep, dim=1)
            mask = torch.arange(end)[None] <= pos[:, None]  # causal within the new tokens
            y = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask)
            out.append(y[0].transpose(0, 1).reshape(s, n_heads * hd))
        return torch.stack(out), present_k, present_v


class BatchedDecodeStep(torch.nn.Module):
    """``B`` rows of ``S`` new tokens through ``model`` against per-layer caches ``[B, n_kv, C, hd]``."""

    def __init__(self, model: CodeLM):
        super().__init__()
        self.model = model.eval()

    def forward(
        self, input_ids: torch.Tensor, seqlens_k: torch.Tensor, last: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        m, arch = self.model, self.model.arch
        hd, s = arch.head_dim, input_ids.shape[1]
        x = m.embed_tokens(input_ids)  # [B, S, d]
        cos = sin = None
        if m.embed_positions is not None:  # row b's tokens sit at seqlens_k[b] - S + 1 ... seqlens_k[b]
            positions = seqlens_k.long()[:, None] - s + 1 + torch.arange(s)[None]
            x = x + m.embed_positions(positions)
        else:  # the rotate-half tables repeat their first half: the operator takes that half
            cos, sin = m.rope_cos[:, : hd // 2], m.rope_sin[:, : hd // 2]
        total = (seqlens_k.max() + 1).to(torch.int32).reshape(())
        x, presents = gqa_blocks(m, x, past, seqlens_k, total, cos, sin, _BatchedGroupQueryAttention)
        picked = x[torch.arange(x.shape[0]), last]  # [B, d]: one token of each row (a prompt may be padded)
        logits = m.lm_head(_norm(m.norm, picked))
        return (logits, *presents)


def _names(n_layers: int, kind: str) -> list[str]:
    return [f"{kind}_{what}_{i}" for i in range(n_layers) for what in ("key", "value")]


def export_batched(model: CodeLM, out_dir: Path, int8: bool = False) -> Path:
    """Write ``decode_batched.onnx`` (and with ``int8`` its 8-bit twin) into ``out_dir``; the path to load."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = model.arch
    path = out_dir / BATCHED_FILE
    if not path.is_file():
        past = [torch.zeros(2, a.n_kv_heads, a.context_length, a.head_dim) for _ in range(2 * a.n_layers)]
        ids, seqlens, last = (
            torch.zeros(2, 3, dtype=torch.long),
            torch.tensor([4, 2], dtype=torch.int32),
            torch.tensor([2, 1]),
        )
        args = (ids, seqlens, last, *past)
        free = {"input_ids": {0: "batch", 1: "new"}, "seqlens_k": {0: "batch"}, "last": {0: "batch"}}
        free["logits"] = {0: "batch"}
        for name in (*_names(a.n_layers, "past"), *_names(a.n_layers, "present")):
            free[name] = {0: "batch"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                BatchedDecodeStep(model),
                args,
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input_ids", "seqlens_k", "last", *_names(a.n_layers, "past")],
                output_names=["logits", *_names(a.n_layers, "present")],
                dynamic_axes=free,
                custom_opsets={"com.microsoft": 1},
            )
    if not int8:
        return path
    out = out_dir / BATCHED_INT8_FILE
    return out if out.is_file() else quantize_onnx_int8(path, out)


def prefill_length(n: int, max_len: int) -> int:
    """The padded length a prompt of ``n`` tokens is prefilled at: the next power of two from 8, at most ``max_len``."""
    return min(max_len, max(8, 1 << (n - 1).bit_length()))


class BatchedOnnxDecoder:
    """An onnxruntime session of the batched graph over a cache of ``slots`` rows that it owns.

    ``prefill(row, tokens)`` fills one row from position 0; ``step(tokens, positions)`` decodes rows
    ``0..len(tokens)-1`` together, row ``r`` at ``positions[r]``. The decode binding of each row count is built
    once and reused, so a step is a few small writes and one ``run_with_iobinding``.
    """

    def __init__(self, path: Path, model: CodeLM, slots: int, threads: int | None = None):
        try:
            import onnxruntime as ort  # optional (the 'kernels' extra): said in one line when missing
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install 'autonas-codelm[kernels]'") from None
        self._ort = ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or DECODE_THREADS
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        a = model.arch
        self.slots, self.max_len, self.n_layers = slots, a.context_length, a.n_layers
        shape = (slots, a.n_kv_heads, a.context_length, a.head_dim)
        self.cache = [np.zeros(shape, dtype=np.float32) for _ in range(2 * a.n_layers)]  # k0, v0, k1, v1, ...
        self._tokens = np.zeros((slots, 1), dtype=np.int64)
        self._seqlens = np.zeros(slots, dtype=np.int32)
        self._last = np.zeros(slots, dtype=np.int64)  # decode: the one new token of each row
        self._logits = np.zeros((slots, a.vocab_size), dtype=np.float32)
        self._past, self._present = _names(a.n_layers, "past"), _names(a.n_layers, "present")
        self._bindings: dict[int, tuple[Any, list[Any]]] = {}

    def _bind(self, rows: slice, buffers: dict[str, np.ndarray]) -> tuple[Any, list[Any]]:
        """An IO binding of ``rows`` of the cache (past and present: the same memory) and the given buffers."""
        value = self._ort.OrtValue.ortvalue_from_numpy  # shares the numpy buffer (CPU, contiguous)
        binding = self.session.io_binding()
        kept = []
        for name, buf in buffers.items():
            kept.append(value(buf))
            if name == "logits":
                binding.bind_ortvalue_output(name, kept[-1])
            else:
                binding.bind_ortvalue_input(name, kept[-1])
        caches = [value(c[rows]) for c in self.cache]
        kept += caches
        for past, present, buf in zip(self._past, self._present, caches, strict=True):
            binding.bind_ortvalue_input(past, buf)
            binding.bind_ortvalue_output(present, buf)
        return binding, kept  # the OrtValues must live as long as the binding

    def prefill(self, row: int, tokens: list[int]) -> np.ndarray:
        """Write ``tokens`` into ``row`` from position 0; the logits ``[V]`` after the last one (a copy)."""
        if not 0 < len(tokens) <= self.max_len:
            raise ValueError(f"a prompt of {len(tokens)} tokens does not fit a context of {self.max_len}")
        padded = prefill_length(len(tokens), self.max_len)
        ids = np.zeros((1, padded), dtype=np.int64)
        ids[0, : len(tokens)] = tokens
        buffers: dict[str, np.ndarray] = {
            "input_ids": ids,
            "seqlens_k": np.asarray([padded - 1], dtype=np.int32),
            "last": np.asarray([len(tokens) - 1], dtype=np.int64),
            "logits": np.zeros((1, self._logits.shape[1]), dtype=np.float32),
        }
        binding, _kept = self._bind(slice(row, row + 1), buffers)
        self.session.run_with_iobinding(binding)
        return buffers["logits"][0]

    def warm(self) -> None:
        """Run every prefill length and every row count once, so no request pays for a shape's first run."""
        length = prefill_length(1, self.max_len)
        while True:
            self.prefill(0, [0] * length)
            if length >= self.max_len:
                break
            length = prefill_length(length + 1, self.max_len)
        for n in range(1, self.slots + 1):
            self.step(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int32))

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Logits ``[n, V]`` (a view, overwritten by the next step) for ``tokens[r]`` at ``positions[r]`` in row r."""
        n = len(tokens)
        if n not in self._bindings:
            buffers: dict[str, np.ndarray] = {
                "input_ids": self._tokens[:n],
                "seqlens_k": self._seqlens[:n],
                "last": self._last[:n],
            }
            self._bindings[n] = self._bind(slice(0, n), {**buffers, "logits": self._logits[:n]})
        self._tokens[:n, 0] = tokens
        self._seqlens[:n] = positions  # the slot written = the row's total length after this step - 1
        self.session.run_with_iobinding(self._bindings[n][0])
        return self._logits[:n]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of row ``src`` into row ``dst`` (keeping the live rows first)."""
        for c in self.cache:
            c[dst, :, :length] = c[src, :, :length]
