"""ONNX export of the batch-1 decode step over a preallocated KV cache, run by onnxruntime.

``decode_step.onnx`` maps ``(input_ids [1, 1], position [1], past_key_i, past_value_i [1, n_kv, C, hd] per
layer)`` to ``(logits [1, V], present_key_i, present_value_i)`` with ``C = context_length``. Attention is
onnxruntime's ``com.microsoft::GroupQueryAttention`` contrib operator (it runs on the CPU provider): with the
past and present of a layer bound to the same buffer it writes the new key/value at ``position`` in place and
attends over the filled slots only. :class:`OnnxDecoder` binds them so once (IO binding over numpy buffers),
so a token costs no copy of the cache; the first version fed the cache in and got ``P + 1`` positions back
per token, a cost that grew with the sequence. ``quantize_onnx_int8`` makes the INT8 twin (8-bit
``MatMulNBits``). The graph is checked against the PyTorch model by scoring the
same validation tokens with both (bits per byte must agree).

What was measured (1 thread, ~10M and ~50M Llama shapes of ``benchmarks/compression.py``, 32-token prompt
then 128 tokens, fresh processes in alternated order; this 2-core machine was shared, load average 13-17, so
the figures spread widely and the lead re-runs ``benchmarks/runtime_latency.py`` on a quiet one):

- the in-place cache (GroupQueryAttention, IO binding) against the first version's cache in/out, both with
  dynamic int8: ~10M 0.50 / 1.03 / 0.67 ms/token against 1.16 / 1.15 / 1.50; ~50M 8.3 / 33.9 / 28.9
  against 31.0 / 56.2 / 36.9. Kept.
- ``ORT_ENABLE_ALL`` already fuses our written-out RMSNorm into ``SimplifiedLayerNormalization`` and SiLU
  into ``QuickGelu``; packing q/k/v into one product and moving the rotary embedding into the attention
  operator took the optimised graph from about 200 nodes to 86 (31 ``MatMulNBits``, 13 norms, 13 ``Add``,
  6 each of ``GroupQueryAttention``, ``Split``, ``QuickGelu``). Kept.
- int8 as 8-bit ``MatMulNBits`` against ``quantize_dynamic``'s ``MatMulInteger``: see
  :func:`quantize_onnx_int8`. Kept.
- onnxruntime's profiler on the result (~10M, 1 thread): ``MatMulNBits`` 66 % of kernel time,
  ``GroupQueryAttention`` 24 %, everything else under 10 %: what is left is the weights' matrix products.

Against CTranslate2's own int8 conversion of the same model (``benchmarks/runtime_latency.py``, 1 thread,
3 alternated rounds, same loaded machine): ~10M 0.44 and 0.56 ms/token against 1.12 and 3.28 in two runs
(single sequential runs: 0.50-0.67 against 0.69-0.76); ~50M 6.2 and 10.9 against 24.1 and 24.0.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import UserError
from kernels.threads import DECODE_THREADS
from nas.model import Block, CodeLM, apply_rope

ONNX_FILE = "decode_step.onnx"
ONNX_INT8_FILE = "decode_step_int8.onnx"


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm written out (the TorchScript exporter has no aten::rms_norm below opset 23)."""
    if isinstance(norm, torch.nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    return norm(x)


class _GroupQueryAttention(torch.autograd.Function):
    """One query token against a preallocated cache ``[1, n_kv, C, hd]``, written at slot ``seqlens_k``.

    Exported as onnxruntime's ``com.microsoft::GroupQueryAttention``: when the caller binds ``past_key`` and
    ``present_key`` to the same buffer the operator writes the new key in place and attends over the filled
    slots only, so a token costs no copy of the cache (onnxruntime-genai drives its decoders the same way).
    With ``cos``/``sin`` tables (``[C, hd / 2]``) the operator also applies the rotary embedding (rotate-half
    layout, as :func:`nas.model.apply_rope`) at position ``seqlens_k``, in the same kernel. The PyTorch body is
    the operator's meaning, run only while tracing the export.
    """

    @staticmethod
    def forward(
        ctx: object,
        q: torch.Tensor,  # [1, 1, n_heads * hd]
        k: torch.Tensor,  # [1, 1, n_kv * hd]
        v: torch.Tensor,
        past_k: torch.Tensor,  # [1, n_kv, C, hd]
        past_v: torch.Tensor,
        seqlens_k: torch.Tensor,  # int32 [1]: the slot of this token (= total length - 1)
        total_length: torch.Tensor,  # int32 []
        cos: torch.Tensor | None,  # [C, hd / 2], or None: no rotary embedding
        sin: torch.Tensor | None,
        n_heads: int,
        n_kv: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hd = past_k.shape[-1]
        slot = int(seqlens_k[0])
        qh, kh = q.view(1, 1, n_heads, hd).transpose(1, 2), k.view(1, 1, n_kv, hd).transpose(1, 2)
        if cos is not None and sin is not None:
            c, s = cos[slot].repeat(2)[None], sin[slot].repeat(2)[None]  # [1, hd]
            qh, kh = apply_rope(qh, c, s), apply_rope(kh, c, s)
        present_k, present_v = past_k.clone(), past_v.clone()
        present_k[0, :, slot] = kh[0, :, 0]
        present_v[0, :, slot] = v.view(n_kv, hd)
        rep = n_heads // n_kv
        keys = present_k[:, :, : slot + 1].repeat_interleave(rep, dim=1)
        values = present_v[:, :, : slot + 1].repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(qh, keys, values)
        return y.transpose(1, 2).reshape(1, 1, n_heads * hd), present_k, present_v

    @staticmethod
    def symbolic(  # the TorchScript exporter's hook: the whole function becomes one contrib node
        g: Any,
        q: Any,
        k: Any,
        v: Any,
        past_k: Any,
        past_v: Any,
        seqlens_k: Any,
        total_length: Any,
        cos: Any,
        sin: Any,
        n_heads: int,
        n_kv: int,
    ) -> Any:
        rotary = cos is not None and sin is not None
        y, present_k, present_v = g.op(
            "com.microsoft::GroupQueryAttention",
            *(q, k, v, past_k, past_v, seqlens_k, total_length, *((cos, sin) if rotary else ())),
            num_heads_i=n_heads,
            kv_num_heads_i=n_kv,
            do_rotary_i=int(rotary),
            outputs=3,
        )
        y.setType(q.type())  # the exporter has no shape inference for contrib operators: give it the types
        present_k.setType(past_k.type())
        present_v.setType(past_v.type())
        return y, present_k, present_v


class DecodeStep(torch.nn.Module):
    """One token through ``model`` against per-layer preallocated caches ``[1, n_kv, context_length, hd]``.

    ``forward(input_ids [1, 1], position [1], past_key_0, past_value_0, ...)`` returns ``(logits [1, V],
    present_key_0, present_value_0, ...)``; the presents are the pasts with slot ``position`` written.
    The q, k and v projections run as one matrix product (their weights concatenated once, at export).
    """

    def __init__(self, model: CodeLM):
        super().__init__()
        self.model = model.eval()

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, arch = self.model, self.model.arch
        hd = arch.head_dim
        x = m.embed_tokens(input_ids)  # [1, 1, d]
        cos = sin = None
        if m.embed_positions is not None:
            x = x + m.embed_positions(position)[None]
        else:  # the rotate-half tables repeat their first half: the operator takes that half
            cos, sin = m.rope_cos[:, : hd // 2], m.rope_sin[:, : hd // 2]
        seqlens_k = position.to(torch.int32)  # the slot written, = total length - 1
        total = (position + 1).to(torch.int32).reshape(())
        x, presents = gqa_blocks(m, x, past, seqlens_k, total, cos, sin, _GroupQueryAttention)
        logits = m.lm_head(_norm(m.norm, x))[:, -1]
        return (logits, *presents)


def gqa_blocks(
    m: CodeLM,
    x: torch.Tensor,
    past: tuple[torch.Tensor, ...],
    seqlens_k: torch.Tensor,
    total: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    attention: type[torch.autograd.Function],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model's blocks as exported: q, k and v as one matrix product (weights concatenated once, at export) and
    attention through ``attention`` (the batch-1 or the batched GroupQueryAttention operator, same arguments) over
    the cache ``past`` (key, value per layer). Returns the residual stream and the updated caches."""
    arch = m.arch
    hd = arch.head_dim
    sizes = [arch.n_heads * hd, arch.n_kv_heads * hd, arch.n_kv_heads * hd]
    presents: list[torch.Tensor] = []
    for i, module in enumerate(m.layers):
        layer = cast(Block, module)  # m.layers is an nn.ModuleList of Blocks
        attn = layer.self_attn
        h = _norm(layer.input_layernorm, x)
        qkv_weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        q, k, v = F.linear(h, qkv_weight).split(sizes, dim=-1)
        y, pk, pv = cast(
            tuple[torch.Tensor, torch.Tensor, torch.Tensor],
            attention.apply(
                q, k, v, past[2 * i], past[2 * i + 1], seqlens_k, total, cos, sin, arch.n_heads, arch.n_kv_heads
            ),
        )
        presents += [pk, pv]
        x = x + attn.o_proj(y)
        x = x + layer.mlp(_norm(layer.post_attention_layernorm, x))
    return x, presents


def _cache_names(model: CodeLM, kind: str) -> list[str]:
    return [f"{kind}_{what}_{i}" for i in range(model.arch.n_layers) for what in ("key", "value")]


def empty_cache(model: CodeLM) -> tuple[np.ndarray, np.ndarray]:
    """An empty cache in :meth:`OnnxDecoder.step`'s format, ``[L, n_kv, 0, hd]`` keys and values."""
    a = model.arch
    z = np.zeros((a.n_layers, a.n_kv_heads, 0, a.head_dim), dtype=np.float32)
    return z, z.copy()


def export_decode_step(model: CodeLM, out_dir: Path) -> Path:
    """Write ``decode_step.onnx`` (fp32) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = model.arch
    past = [torch.zeros(1, a.n_kv_heads, a.context_length, a.head_dim) for _ in range(2 * a.n_layers)]
    args = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([3]), *past)
    path = out_dir / ONNX_FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            DecodeStep(model),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "position", *_cache_names(model, "past")],
            output_names=["logits", *_cache_names(model, "present")],
            custom_opsets={"com.microsoft": 1},
        )
    return path


INT8_BLOCK = 128  # input channels per scale; each block of a weight row has its own fp32 scale


def quantize_onnx_int8(fp32_path: Path, out: Path | None = None) -> Path:
    """The INT8 twin (written to ``out``, by default ``decode_step_int8.onnx`` beside the fp32 graph): every MatMul
    with a constant weight becomes onnxruntime's ``MatMulNBits`` at 8 bits.

    Symmetric int8 weights with one scale per block of ``INT8_BLOCK`` input channels, and accuracy level 4:
    the activations are quantized to int8 on the fly, so the products run on int8 dot-product kernels.
    Measured against ``quantize_dynamic`` (``MatMulInteger`` with per-channel weights) on the ~10M shape,
    1 thread, four alternated fresh-process rounds: 0.47-0.49 ms/token against 0.78-1.06, and closer to
    PyTorch (largest per-token NLL difference 0.027 nats against 0.040). Accuracy level 0 (fp32 compute on
    dequantized weights) was 45 ms/token: not an option.
    """
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # optional (the 'kernels' extra): only --onnx needs it
        raise UserError(
            "ONNX INT8 needs onnx, onnx-ir and onnxruntime: pip install 'autonas-codelm[kernels]'"
        ) from None

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)), bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4
    )
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs a line per graph node at INFO
    try:
        quantizer.process()
    finally:
        log.setLevel(level)
    out = Path(out) if out is not None else Path(fp32_path).with_name(ONNX_INT8_FILE)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


class OnnxDecoder:
    """An onnxruntime session of the decode step, driven token by token over a cache it owns.

    The caches are numpy buffers shared with onnxruntime (``OrtValue`` over the same memory) and bound as both
    the past input and the present output of every layer, once; the token and position are one-element
    buffers bound the same way. A step is then two scalar writes and ``run_with_iobinding``.
    """

    def __init__(self, path: Path, model_arch_source: CodeLM, threads: int | None = None):
        try:
            import onnxruntime as ort  # optional (the 'kernels' extra): said in one line when missing
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install 'autonas-codelm[kernels]'") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or DECODE_THREADS
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.model = model_arch_source
        a = model_arch_source.arch
        shape = (1, a.n_kv_heads, a.context_length, a.head_dim)
        self.cache = [np.zeros(shape, dtype=np.float32) for _ in range(2 * a.n_layers)]  # k0, v0, k1, v1, ...
        self._token = np.zeros((1, 1), dtype=np.int64)
        self._position = np.zeros(1, dtype=np.int64)
        self._logits = np.zeros((1, a.vocab_size), dtype=np.float32)
        self.binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy  # shares the numpy buffer (CPU, contiguous)
        self._kept = [value(x) for x in (self._token, self._position, self._logits, *self.cache)]
        token, position, logits, *caches = self._kept
        self.binding.bind_ortvalue_input("input_ids", token)
        self.binding.bind_ortvalue_input("position", position)
        self.binding.bind_ortvalue_output("logits", logits)
        for past, present, buf in zip(
            _cache_names(self.model, "past"), _cache_names(self.model, "present"), caches, strict=True
        ):
            self.binding.bind_ortvalue_input(past, buf)
            self.binding.bind_ortvalue_output(present, buf)
        self.pos = 0

    def reset(self) -> None:
        """Start a new sequence (the stale slots past ``pos`` are never read)."""
        self.pos = 0

    def next_logits(self, token: int) -> np.ndarray:
        """Feed ``token`` at the next position; the logits ``[V]`` (a view, overwritten by the next call)."""
        if self.pos >= self.model.arch.context_length:
            raise UserError(f"the decode step holds {self.model.arch.context_length} positions; all are used")
        self._token[0, 0] = token
        self._position[0] = self.pos
        self.session.run_with_iobinding(self.binding)
        self.pos += 1
        return self._logits[0]

    def step(
        self, token: int, position: int, past_k: np.ndarray, past_v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stateless form: ``past_k/v [L, n_kv, position, hd]`` in, ``present [L, n_kv, position + 1, hd]`` out.

        Copies the cache in and out (kept for callers that hold their own cache); :meth:`next_logits` does not.
        """
        for i in range(self.model.arch.n_layers):
            self.cache[2 * i][0, :, :position] = past_k[i]
            self.cache[2 * i + 1][0, :, :position] = past_v[i]
        self.pos = position
        logits = self.next_logits(token).copy()
        k = np.stack([c[0, :, : position + 1] for c in self.cache[0::2]])
        v = np.stack([c[0, :, : position + 1] for c in self.cache[1::2]])
        return logits, k, v

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        """Negative log-likelihood of tokens[1:] given their prefix (within one context window)."""
        self.reset()
        out = []
        for pos in range(len(tokens) - 1):
            logits = self.next_logits(int(tokens[pos])).astype(np.float64)
            out.append(np.logaddexp.reduce(logits) - float(logits[int(tokens[pos + 1])]))
        return np.array(out)

    def decode_latency_ms(self, prompt_tokens: int = 32, decode_tokens: int = 32, repeats: int = 3) -> dict[str, float]:
        times = []
        for _ in range(repeats + 1):
            self.reset()
            for _ in range(prompt_tokens):
                self.next_logits(1)
            run = []
            for _ in range(decode_tokens):
                t0 = time.perf_counter()
                self.next_logits(1)
                run.append((time.perf_counter() - t0) * 1e3)
            times.append(run)
        flat = sorted(x for run in times[1:] for x in run)  # the first repeat warms up
        return {"latency_ms_p50": statistics.median(flat), "latency_ms_p90": flat[int(0.9 * (len(flat) - 1))]}


@torch.no_grad()
def torch_nll_nats(model: CodeLM, tokens: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
    logits = model(x[:, :-1])[0].float()
    return F.cross_entropy(logits, x[0, 1:], reduction="none").numpy().astype(np.float64)


def check_against_torch(
    model: CodeLM, decoders: dict[str, OnnxDecoder], tokens: np.ndarray, token_bytes: np.ndarray
) -> dict[str, float]:
    """Bits per byte of the same tokens (one context window) by PyTorch and by each ONNX graph."""
    window = np.asarray(tokens[: model.arch.context_length], dtype=np.int64)
    nbytes = float(token_bytes[window[1:]].sum())
    out = {"bpb_torch": float(torch_nll_nats(model, window).sum() / math.log(2) / nbytes)}
    for name, dec in decoders.items():
        out[f"bpb_{name}"] = float(dec.nll_nats(window).sum() / math.log(2) / nbytes)
    return out
