"""Hugging Face ``transformers`` export and import for Llama-family architectures.

An ArchConfig with RMSNorm + SwiGLU + RoPE is exactly a ``LlamaForCausalLM``: the weights map one to one
(our module names follow Llama's), so the exported folder loads with ``AutoModelForCausalLM`` anywhere, and its
tokenizer (byte-level or BPE) with ``AutoTokenizer``, encoding text to exactly the ids the model was trained on.
Other shapes (LayerNorm, GELU, learned positions) have no lossless Llama equivalent and are refused with
the reason, instead of being exported approximately.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from harness.errors import UserError
from harness.humaneval import truncate_at_stop
from harness.model_code import active_code_hash, stock_code_hash
from harness.tokenizer import ByteTokenizer, Tokenizer, hf_backend
from nas.model import CodeLM
from nas.space import ArchConfig

# transformers (and tokenizers) are imported inside the functions that use them: importing transformers takes
# seconds, and a worker that never exports or loads a Hugging Face model should not pay for it.
if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast


class NotExportable(UserError):
    """The architecture has no exact Hugging Face equivalent."""


def export_blockers(arch: ArchConfig) -> list[str]:
    """Why ``arch`` cannot be exported exactly (empty when it can)."""
    reasons = []
    if arch.norm != "rmsnorm":
        reasons.append(f"norm={arch.norm} (Llama uses RMSNorm)")
    if arch.activation != "swiglu":
        reasons.append(f"activation={arch.activation} (Llama uses SwiGLU)")
    if arch.pos != "rope":
        reasons.append(f"pos={arch.pos} (Llama uses RoPE)")
    active, stock = active_code_hash(), stock_code_hash()
    if active != stock:  # an edited network (another MLP, a new attention): the Llama mapping would be another model
        reasons.append(
            f"the model code was edited (hash {active[:12]}, stock {stock[:12]}): Llama's modelling code is not the "
            "network that was trained"
        )
    return reasons


def to_hf_config(arch: ArchConfig, eos_id: int | None = None) -> LlamaConfig:
    """The ``LlamaConfig`` that holds ``arch`` exactly; raises :class:`NotExportable` otherwise."""
    from transformers import LlamaConfig

    blockers = export_blockers(arch)
    if blockers:
        raise NotExportable("cannot export to Hugging Face Llama: " + "; ".join(blockers))
    return LlamaConfig(
        vocab_size=arch.vocab_size,
        hidden_size=arch.d_model,
        intermediate_size=arch.d_ff,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        num_key_value_heads=arch.n_kv_heads,
        head_dim=arch.head_dim,
        hidden_act="silu",
        max_position_embeddings=arch.context_length,
        rms_norm_eps=arch.norm_eps,
        tie_word_embeddings=arch.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(arch.rope_theta)},
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def hf_state_dict(model: CodeLM) -> dict[str, torch.Tensor]:
    """Our names -> Llama names (``model.`` prefix for the trunk); tied head stored once."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if model.arch.tie_embeddings:
                continue
            out[name] = tensor
        else:
            out["model." + name] = tensor
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def export_hf(model: CodeLM, out_dir: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load:
    config.json, generation_config.json, model.safetensors and the tokenizer (tokenizer.json +
    tokenizer_config.json), whose ids are exactly ``tokenizer``'s.

    ``tokenizer`` None is the byte tokenizer, as for a run folder without a tokenizer.json.
    """
    from transformers import GenerationConfig

    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    if tok.vocab_size != model.arch.vocab_size:
        raise UserError(f"the model has {model.arch.vocab_size} tokens, its tokenizer {tok.name!r} {tok.vocab_size}")
    config = to_hf_config(model.arch, tok.eos_id)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    eos = tok.eos_id
    GenerationConfig(eos_token_id=eos, bos_token_id=eos, pad_token_id=eos).save_pretrained(out)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    save_hf_tokenizer(tok, out, model.arch.context_length)
    return out


def hf_tokenizer(tokenizer: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    """``tokenizer`` as a ``PreTrainedTokenizerFast`` that adds no bos/eos and whose eos, bos and pad are our
    document separator (the model was trained with it between documents and nothing else)."""
    from transformers import PreTrainedTokenizerFast

    backend = hf_backend(tokenizer)
    sep = backend.id_to_token(tokenizer.eos_id)
    # The byte tokenizer's separator is the stand-in for NUL ("Ā"), also a real character: with
    # split_special_tokens, text is never matched against it, so "Ā" in text encodes to its UTF-8 bytes as ours does.
    # A BPE's "<|endoftext|>" in text is the separator in our encoding too, so it stays matched there.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=sep,
        bos_token=sep,
        pad_token=sep,
        model_max_length=max_length,
        split_special_tokens=isinstance(tokenizer, ByteTokenizer),
    )


def save_hf_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int) -> None:
    """Save :func:`hf_tokenizer` into ``out`` under the class name every transformers version loads."""
    hf_tokenizer(tokenizer, max_length).save_pretrained(out)
    # transformers 5 records its new class name (TokenizersBackend), which transformers 4 (and tools pinned to it)
    # cannot resolve; PreTrainedTokenizerFast is the same class under the name both know.
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def arch_from_hf_config(config: LlamaConfig) -> ArchConfig:
    """The ArchConfig of a Llama-family Hugging Face config (for loading teachers and exported models)."""
    if getattr(config, "model_type", "") != "llama":
        raise UserError(f"only Llama-family models map onto an ArchConfig, got model_type={config.model_type!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ArchConfig(
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        d_ff=config.intermediate_size,
        activation="swiglu",
        norm="rmsnorm",
        pos="rope",
        tie_embeddings=bool(config.tie_word_embeddings),
        vocab_size=config.vocab_size,
        context_length=config.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        norm_eps=float(config.rms_norm_eps),
        head_size=None if head_dim * config.num_attention_heads == config.hidden_size else head_dim,
    )


def load_hf_as_codelm(path: str | Path) -> CodeLM:
    """Load an exported (or any Llama-family) HF folder into our CodeLM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"not a Hugging Face model folder (no config.json): {p}")
    arch = arch_from_hf_config(AutoConfig.from_pretrained(p))
    hf = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    sd = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    model = CodeLM(arch)
    if arch.tie_embeddings:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True)
    return model


def load_hf_causal_lm(path_or_id: str, device: str = "cpu") -> tuple[Any, Any]:
    """``AutoModelForCausalLM.from_pretrained`` and its tokenizer, in fp32, in eval mode.

    Typed Any: the model is a PreTrainedModel and a GenerationMixin at once, which transformers' stubs do not
    express (generate() and to(device) do not type-check through PreTrainedModel).

    A path that does not exist is refused before transformers tries the hub (which would fail offline
    with a long message); a hub id works when it is in the local Hugging Face cache or online.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path_or_id).expanduser()
    looks_local = (
        p.is_absolute() or str(path_or_id).startswith((".", "~")) or p.exists() or str(path_or_id).count("/") > 1
    )
    if looks_local and not p.is_dir():
        raise UserError(f"teacher model folder {path_or_id} does not exist")
    if looks_local and not (p / "config.json").is_file():
        raise UserError(f"{path_or_id} is not a Hugging Face model folder (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p) if looks_local else path_or_id, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(p) if looks_local else path_or_id)
    except OSError as err:
        raise UserError(f"cannot load Hugging Face model {path_or_id}: {str(err).splitlines()[0]}") from None
    # transformers' stubs type to() through a decorator that hides nn.Module.to's (device) signature
    model.to(torch.device(device)).eval()  # type: ignore[arg-type]
    return model, tokenizer


class HFModelSource:
    """A local Hugging Face causal LM (a folder written by ``save_pretrained``, or a cached hub id)."""

    def __init__(self, path: str, device: str = "cpu"):
        self.model, self.tokenizer = load_hf_causal_lm(path, device)
        self.name = f"hf:{path}"

    def complete(
        self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str], seed: int
    ) -> list[str]:
        enc = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tokenizer.eos_token_id,
            "stop_strings": list(stop) or None,
            "tokenizer": self.tokenizer,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        out = []
        for i in range(n):
            torch.manual_seed(seed + i)
            with torch.no_grad():
                ids = self.model.generate(**enc, **kwargs)
            text = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.append(truncate_at_stop(text, stop))
        return out
