"""GGUF export of Llama-shaped models, for llama.cpp and Ollama users (the ``gguf`` package writes the file).

Invariants:

* only what :func:`nas.hf.export_blockers` lets through (RMSNorm + SwiGLU + RoPE, stock model code) is written: the
  file is then exactly llama.cpp's ``llama`` architecture, never an approximation;
* tensor names come from ``gguf``'s own Hugging Face -> GGUF name map (``blk.N.attn_q.weight`` ...), from the same
  Llama names the Hugging Face export writes, so the two exports cannot disagree about which weight is which;
* the query and key projections are permuted as llama.cpp's own converter does: our RoPE (like Hugging Face's)
  rotates the two halves of each head, llama.cpp's ``llama`` rotates adjacent pairs; :func:`permute_rope` maps one
  row order onto the other, :func:`unpermute_rope` undoes it;
* the tokenizer is stored as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary whose ids are exactly the model's:
  the byte tokenizer as its 256 byte symbols with no merges, a BPE with its tokens and merges;
* norms stay float32 in every output type (as llama.cpp's converter keeps them); matrices are float32, float16 or
  Q8_0 (quantized by ``gguf.quants``; a matrix whose rows do not split into 32-value blocks falls back to float16).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch

from harness.errors import UserError
from harness.tokenizer import Tokenizer, hf_backend
from nas.hf import export_blockers, hf_state_dict
from nas.model import CodeLM

GGUFType = Literal["f32", "f16", "q8_0"]
GGUF_TYPES: tuple[GGUFType, ...] = ("f32", "f16", "q8_0")
_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]  # "llama"
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for GPT-2's word-splitting pattern, which tokenizers' ByteLevel uses


class NotGGUFExportable(UserError):
    """The model or its tokenizer has no exact llama.cpp equivalent."""


@dataclass(frozen=True)
class GGUFVocab:
    """A tokenizer as llama.cpp's ``gpt2`` vocabulary: ``tokens[i]`` is id i's text (byte-level symbols)."""

    tokens: list[str]
    token_types: list[int]  # gguf.TokenType values
    merges: list[str]  # "left right", in rank order
    eos_id: int


@dataclass(frozen=True)
class GGUFExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    dtype: GGUFType
    tensors: int
    size_bytes: int
    tensor_types: dict[str, str]  # GGUF tensor name -> GGML type name (F32, F16, Q8_0)


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from the rotate-half layout (ours, Hugging Face's) to llama.cpp's adjacent pairs.

    Within a head, rotate-half pairs row j with row j + head_dim/2; llama.cpp pairs rows 2j and 2j+1. Row order is
    all that changes, so attention scores (and the model's outputs) are the same. Same as llama.cpp's converter.
    """
    rows = w.shape[0]
    # [n_heads * head_dim, d] -> [n_heads, 2 (half), head_dim/2, d] -> [n_heads, head_dim/2, 2, d]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`permute_rope` (for readers of the file, and for checking it)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model: CodeLM) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names, float32, q/k permuted; a tied head is stored once (llama.cpp
    reuses ``token_embd.weight`` when ``output.weight`` is absent)."""
    arch = model.arch
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, arch.n_layers)
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in hf_state_dict(model).items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:  # every stock Llama weight has a name: a miss means the network is not what we think
            raise NotGGUFExportable(f"no GGUF name for the weight {hf_name}")
        t = tensor.float()
        if hf_name.endswith("self_attn.q_proj.weight"):
            t = permute_rope(t, arch.n_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            t = permute_rope(t, arch.n_kv_heads)
        out[name] = t.contiguous()
    return out


def gguf_vocab(tokenizer: Tokenizer) -> GGUFVocab:
    """``tokenizer`` as llama.cpp's ``gpt2`` vocabulary; refused when llama.cpp would split text otherwise."""
    spec = json.loads(hf_backend(tokenizer).to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    why = []
    if model.get("type") != "BPE":
        why.append(f"its model is {model.get('type')}, not BPE")
    if spec.get("normalizer") is not None:
        why.append("it normalizes text first")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        why.append(f"its pre-tokenizer is {pre.get('type')} (llama.cpp's gpt2 vocabulary splits like ByteLevel)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if merges and not pre.get("use_regex", True):  # llama.cpp splits words before merging
        why.append("it merges across words")
    if why:
        raise NotGGUFExportable(f"the tokenizer {tokenizer.name!r} has no llama.cpp equivalent: " + "; ".join(why))
    text: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in text}
    for added in spec.get("added_tokens") or []:
        text[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    types[tokenizer.eos_id] = gguf.TokenType.CONTROL  # the separator: never text, an end of generation
    if sorted(text) != list(range(tokenizer.vocab_size)):
        raise NotGGUFExportable(
            f"the tokenizer {tokenizer.name!r} does not number its tokens 0..{tokenizer.vocab_size - 1}"
        )
    return GGUFVocab(
        tokens=[text[i] for i in range(tokenizer.vocab_size)],
        token_types=[int(types[i]) for i in range(tokenizer.vocab_size)],
        merges=merges,
        eos_id=tokenizer.eos_id,
    )


class _Writer(gguf.GGUFWriter):
    """``gguf``'s writer refuses an empty array, which the format and llama.cpp's reader accept; llama.cpp requires
    the merges key of a ``gpt2`` vocabulary even when there are none (the byte tokenizer). Only that case is ours."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool, sub_type: Any = None) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _add_metadata(w: gguf.GGUFWriter, model: CodeLM, name: str, dtype: GGUFType) -> None:
    a = model.arch
    w.add_name(name)
    w.add_file_type(int(_FILE_TYPE[dtype]))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(a.vocab_size)
    w.add_context_length(a.context_length)
    w.add_embedding_length(a.d_model)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.d_ff)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_key_length(a.head_dim)  # llama.cpp assumes d_model / n_heads without these (a head-pruned model differs)
    w.add_value_length(a.head_dim)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(float(a.rope_theta))
    w.add_layer_norm_rms_eps(float(a.norm_eps))


def _add_vocab(w: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    else:
        w.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    w.add_eos_token_id(vocab.eos_id)
    w.add_bos_token_id(vocab.eos_id)
    w.add_pad_token_id(vocab.eos_id)
    # The training text joins documents with the separator, so a document starts right after one (and our own
    # generate() starts a prompt with it): llama.cpp should put it in front of a prompt too, and never append one.
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _encode(t: torch.Tensor, dtype: GGUFType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor as stored: float32 for vectors, else float16 or Q8_0 (float16 where rows are not 32-blocks)."""
    data = t.numpy().astype(np.float32)
    if data.ndim == 1 or dtype == "f32":
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if data.shape[-1] % block == 0:
            return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def export_gguf(
    model: CodeLM, tokenizer: Tokenizer, out: str | Path, dtype: GGUFType = "f16", name: str = "autonas-codelm"
) -> GGUFExport:
    """Write ``model`` and ``tokenizer`` as one GGUF file for llama.cpp's ``llama`` architecture.

    Everything is checked before the file is opened, and the file is written beside ``out`` and moved into place at
    the end, so a refusal or a failure leaves no partial file under that name.
    """
    if dtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {dtype!r}: use {', '.join(GGUF_TYPES)}")
    blockers = export_blockers(model.arch)
    if blockers:
        raise NotGGUFExportable("cannot export to GGUF (llama.cpp's llama architecture): " + "; ".join(blockers))
    if tokenizer.vocab_size != model.arch.vocab_size:
        raise UserError(f"the model has {model.arch.vocab_size} tokens, its tokenizer {tokenizer.vocab_size}")
    vocab = gguf_vocab(tokenizer)
    tensors = {k: _encode(v, dtype) for k, v in gguf_tensors(model).items()}
    target = Path(out)
    tmp = target.parent / f".{target.name}.part"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        w = _Writer(tmp, ARCH)
        _add_metadata(w, model, name, dtype)
        _add_vocab(w, vocab)
        for tensor_name, (data, qtype) in tensors.items():
            w.add_tensor(tensor_name, data, raw_dtype=qtype if qtype == gguf.GGMLQuantizationType.Q8_0 else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(target)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):  # nothing there (moved into place, or never created)
            tmp.unlink()
    return GGUFExport(
        path=target,
        dtype=dtype,
        tensors=len(tensors),
        size_bytes=target.stat().st_size,
        tensor_types={k: qtype.name for k, (_, qtype) in tensors.items()},
    )
