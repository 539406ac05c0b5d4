"""ONNX export of the batch-1 decode step with the KV cache as graph inputs and outputs, run by onnxruntime.

``decode_step.onnx`` maps ``(input_ids [1, 1], position [1], past_k, past_v [L, n_kv, P, hd])`` to
``(logits [1, V], present_k, present_v [L, n_kv, P + 1, hd])``: the caller keeps the cache between calls,
so one ``session.run`` is one generated token. ``quantize_onnx_int8`` makes the INT8 twin with
onnxruntime's dynamic quantization (per-channel weights). The graph is checked against the PyTorch
model by scoring the same validation tokens with both (bits per byte must agree).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import UserError
from nas.model import Block, CodeLM, apply_rope

ONNX_FILE = "decode_step.onnx"
ONNX_INT8_FILE = "decode_step_int8.onnx"


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm written out (the TorchScript exporter has no aten::rms_norm below opset 23)."""
    if isinstance(norm, torch.nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    return norm(x)


class DecodeStep(torch.nn.Module):
    """One token through ``model`` given the past keys/values, written without the stateful KVCache."""

    def __init__(self, model: CodeLM):
        super().__init__()
        self.model = model.eval()

    def forward(
        self, input_ids: torch.Tensor, position: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, arch = self.model, self.model.arch
        hd = arch.head_dim
        x = m.embed_tokens(input_ids)  # [1, 1, d]
        rope = None
        if m.embed_positions is not None:
            x = x + m.embed_positions(position)[None]
        else:
            rope = (m.rope_cos[position], m.rope_sin[position])  # [1, hd]
        new_k, new_v = [], []
        for i, module in enumerate(m.layers):
            layer = cast(Block, module)  # m.layers is an nn.ModuleList of Blocks
            attn = layer.self_attn
            h = _norm(layer.input_layernorm, x)
            q = attn.q_proj(h).view(1, 1, arch.n_heads, hd).transpose(1, 2)
            k = attn.k_proj(h).view(1, 1, arch.n_kv_heads, hd).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, arch.n_kv_heads, hd).transpose(1, 2)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k_all = torch.cat([past_k[i : i + 1], k], dim=2)
            v_all = torch.cat([past_v[i : i + 1], v], dim=2)
            new_k.append(k_all)
            new_v.append(v_all)
            if arch.n_kv_heads != arch.n_heads:
                rep = arch.n_heads // arch.n_kv_heads
                k_all, v_all = k_all.repeat_interleave(rep, dim=1), v_all.repeat_interleave(rep, dim=1)
            att = torch.softmax((q @ k_all.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
            y = (att @ v_all).transpose(1, 2).reshape(1, 1, arch.n_heads * hd)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(_norm(layer.post_attention_layernorm, x))
        logits = m.lm_head(_norm(m.norm, x))[:, -1]
        return logits, torch.cat(new_k, 0), torch.cat(new_v, 0)


def empty_cache(model: CodeLM) -> tuple[np.ndarray, np.ndarray]:
    a = model.arch
    z = np.zeros((a.n_layers, a.n_kv_heads, 0, a.head_dim), dtype=np.float32)
    return z, z.copy()


def export_decode_step(model: CodeLM, out_dir: Path) -> Path:
    """Write ``decode_step.onnx`` (fp32) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = model.arch
    past = torch.zeros(a.n_layers, a.n_kv_heads, 3, a.head_dim)
    args = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([3]), past, past.clone())
    path = out_dir / ONNX_FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            DecodeStep(model),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "position", "past_k", "past_v"],
            output_names=["logits", "present_k", "present_v"],
            dynamic_axes={
                "past_k": {2: "past"},
                "past_v": {2: "past"},
                "present_k": {2: "total"},
                "present_v": {2: "total"},
            },
        )
    return path


def quantize_onnx_int8(fp32_path: Path) -> Path:
    from onnxruntime.quantization import (
        QuantType,
        quantize_dynamic,
    )  # optional (the 'kernels' extra): only --onnx needs it

    out = Path(fp32_path).with_name(ONNX_INT8_FILE)
    quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


class OnnxDecoder:
    """An onnxruntime session of the decode step, driven token by token."""

    def __init__(self, path: Path, model_arch_source: CodeLM, threads: int | None = None):
        try:
            import onnxruntime as ort  # optional (the 'kernels' extra): said in one line when missing
        except ImportError:
            raise UserError("onnxruntime is not installed: pip install 'autonas-codelm[kernels]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.model = model_arch_source

    def step(
        self, token: int, position: int, past_k: np.ndarray, past_v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, k, v = self.session.run(
            None,
            {
                "input_ids": np.array([[token]], dtype=np.int64),
                "position": np.array([position], dtype=np.int64),
                "past_k": past_k,
                "past_v": past_v,
            },
        )
        return logits[0], k, v

    def nll_nats(self, tokens: np.ndarray) -> np.ndarray:
        """Negative log-likelihood of tokens[1:] given their prefix (within one context window)."""
        past_k, past_v = empty_cache(self.model)
        out = []
        for pos in range(len(tokens) - 1):
            logits, past_k, past_v = self.step(int(tokens[pos]), pos, past_k, past_v)
            lse = np.logaddexp.reduce(logits.astype(np.float64))
            out.append(lse - float(logits[int(tokens[pos + 1])]))
        return np.array(out)

    def decode_latency_ms(self, prompt_tokens: int = 32, decode_tokens: int = 32, repeats: int = 3) -> dict[str, float]:
        times = []
        for _ in range(repeats + 1):
            past_k, past_v = empty_cache(self.model)
            for pos in range(prompt_tokens):
                _, past_k, past_v = self.step(1, pos, past_k, past_v)
            run = []
            for pos in range(prompt_tokens, prompt_tokens + decode_tokens):
                t0 = time.perf_counter()
                _, past_k, past_v = self.step(1, pos, past_k, past_v)
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
