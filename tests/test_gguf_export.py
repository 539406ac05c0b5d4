"""GGUF export, checked by reading the file back with ``gguf``'s own reader: names, shapes, types, metadata, the
tokenizer, the weights themselves, and the logits of llama.cpp's ``llama`` graph rebuilt from the file alone.

llama.cpp's Python binding builds from source only, so it is no dependency: the logits check re-implements the parts
of its ``llama`` graph that the file drives (RMSNorm, GQA attention with its adjacent-pair RoPE, SwiGLU) from the
file's metadata and tensors, and the last test, where ``llama_cpp`` is importable, has llama.cpp itself run the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agent.cli import app
from harness.errors import UserError
from harness.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, byte_level_symbols, hf_backend, train_bpe
from kernels import export_cli
from kernels.gguf_export import (
    GGUF_TYPES,
    NotGGUFExportable,
    export_gguf,
    gguf_tensors,
    permute_rope,
    unpermute_rope,
)
from nas.model import CodeLM, build_model
from nas.space import ArchConfig

REPO = Path(__file__).resolve().parents[1]
ARCHS = [
    ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=160, context_length=64),  # GQA, tied
    ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_ff=96, context_length=32, tie_embeddings=False),
    ArchConfig(
        n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, head_size=8, rope_theta=500.0
    ),  # pruned heads
]


def _perturbed(arch: ArchConfig, seed: int = 0) -> CodeLM:
    """Random weights everywhere, norms included, large enough that a wrong RoPE layout shows in the logits."""
    model = build_model(arch, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else 0.15) + (1.0 if p.dim() == 1 else 0))
    return model.eval()


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def _weights(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor as float32 in the model's [out, in] orientation, dequantized where stored as Q8_0."""
    out = {}
    for t in reader.tensors:
        data = (
            gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type == gguf.GGMLQuantizationType.Q8_0 else t.data
        )
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))
    return out


def _llama_cpp_logits(path: Path, ids: list[int], adjacent_pairs: bool = True) -> np.ndarray:
    """llama.cpp's ``llama`` forward, driven only by the file: metadata for the shape, tensors by their GGUF names.

    ``adjacent_pairs`` is llama.cpp's RoPE (rotate x[2i], x[2i+1]); False rotates halves instead, which is what a
    file without the q/k permutation would need, and which llama.cpp does not do.
    """
    r = gguf.GGUFReader(path)
    w = _weights(r)

    def meta(key: str) -> float:
        return float(_field(r, f"llama.{key}"))  # type: ignore[arg-type]

    n_layers, n_heads, n_kv = (
        int(meta("block_count")),
        int(meta("attention.head_count")),
        int(meta("attention.head_count_kv")),
    )
    hd, eps, base = int(meta("rope.dimension_count")), meta("attention.layer_norm_rms_epsilon"), meta("rope.freq_base")
    assert int(meta("attention.key_length")) == hd
    t = len(ids)
    pos = np.arange(t)[:, None]
    freqs = base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
    cos, sin = np.cos(pos * freqs), np.sin(pos * freqs)  # [t, hd/2]

    def rope(x: np.ndarray) -> np.ndarray:  # x: [heads, t, hd]
        if adjacent_pairs:
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
            return out
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    x = w["token_embd.weight"][ids].astype(np.float64)  # [t, d]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, n_heads, hd).transpose(1, 0, 2)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, n_kv, hd).transpose(1, 0, 2)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, n_kv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, n_heads // n_kv, axis=0), np.repeat(v, n_heads // n_kv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v  # [heads, t, hd]
        x = x + a.transpose(1, 0, 2).reshape(t, n_heads * hd) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])  # llama.cpp reuses the embedding when output is absent
    return rms(x, w["output_norm.weight"]) @ head.T


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.describe())
def test_f32_file_reads_back_exactly(tmp_path: Path, arch: ArchConfig) -> None:
    model = _perturbed(arch)
    done = export_gguf(model, ByteTokenizer(), tmp_path / "m.gguf", "f32", name="tiny")
    r = gguf.GGUFReader(done.path)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight"
        for i in range(arch.n_layers)
        for n in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
    }
    if not arch.tie_embeddings:
        expected.add("output.weight")
    assert {t.name for t in r.tensors} == expected and done.tensors == len(expected)
    sd = model.state_dict()
    ours = {
        "token_embd.weight": sd["embed_tokens.weight"],
        "output_norm.weight": sd["norm.weight"],
        **({} if arch.tie_embeddings else {"output.weight": sd["lm_head.weight"]}),
    }
    for i in range(arch.n_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        ours |= {
            b + "attn_norm.weight": sd[p + "input_layernorm.weight"],
            b + "attn_q.weight": sd[p + "self_attn.q_proj.weight"],
            b + "attn_k.weight": sd[p + "self_attn.k_proj.weight"],
            b + "attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            b + "attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            b + "ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            b + "ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            b + "ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            b + "ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    back = _weights(r)
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert list(t.shape) == list(reversed(ours[t.name].shape)), t.name  # GGUF lists dimensions innermost first
        stored = torch.from_numpy(back[t.name].copy())
        if t.name.endswith("attn_q.weight"):
            stored = unpermute_rope(stored, arch.n_heads)
        elif t.name.endswith("attn_k.weight"):
            stored = unpermute_rope(stored, arch.n_kv_heads)
        assert torch.equal(stored, ours[t.name]), t.name
    assert not torch.equal(
        torch.from_numpy(back["blk.0.attn_q.weight"].copy()), ours["blk.0.attn_q.weight"]
    )  # permuted

    values = {
        "general.architecture": "llama",
        "general.name": "tiny",
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "llama.context_length": arch.context_length,
        "llama.embedding_length": arch.d_model,
        "llama.block_count": arch.n_layers,
        "llama.feed_forward_length": arch.d_ff,
        "llama.attention.head_count": arch.n_heads,
        "llama.attention.head_count_kv": arch.n_kv_heads,
        "llama.attention.key_length": arch.head_dim,
        "llama.attention.value_length": arch.head_dim,
        "llama.rope.dimension_count": arch.head_dim,
        "llama.vocab_size": 256,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, value in values.items():
        assert _field(r, key) == value, key
    assert _field(r, "llama.rope.freq_base") == pytest.approx(arch.rope_theta)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(arch.norm_eps)


def test_byte_tokenizer_is_its_256_symbols_with_an_empty_merges_list(tmp_path: Path) -> None:
    r = gguf.GGUFReader(export_gguf(_perturbed(ARCHS[0]), ByteTokenizer(), tmp_path / "m.gguf").path)
    assert _field(r, "tokenizer.ggml.tokens") == byte_level_symbols()
    types = _field(r, "tokenizer.ggml.token_type")
    assert types == [int(gguf.TokenType.CONTROL)] + [int(gguf.TokenType.NORMAL)] * 255
    merges = r.get_field("tokenizer.ggml.merges")  # llama.cpp refuses a gpt2 vocabulary without this key
    assert merges is not None and merges.contents() == []
    # after the key (length, bytes): ARRAY, of STRING, 0 items
    assert [int(p[0]) for p in merges.parts[2:]] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, 0]


def test_bpe_tokenizer_tokens_merges_and_separator(tmp_path: Path, small_corpus_bpe: BPETokenizer) -> None:
    tok = small_corpus_bpe
    arch = ARCHS[0].model_copy(update={"vocab_size": tok.vocab_size})
    r = gguf.GGUFReader(export_gguf(_perturbed(arch), tok, tmp_path / "m.gguf").path)
    spec = json.loads(hf_backend(tok).to_str())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == tok.vocab_size == _field(r, "llama.vocab_size")
    assert tokens == [by_id[i] for i in range(tok.vocab_size)]
    assert tokens[tok.eos_id] == "<|endoftext|>" and _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id
    types = _field(r, "tokenizer.ggml.token_type")
    assert isinstance(types, list) and types[tok.eos_id] == int(gguf.TokenType.CONTROL)
    assert types.count(int(gguf.TokenType.NORMAL)) == tok.vocab_size - 1
    merges = _field(r, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) for m in spec["model"]["merges"]] and len(merges) > 200
    # each merge joins two tokens into a third, as llama.cpp's BPE looks them up
    assert all("".join(m.split(" ")) in set(tokens) for m in merges)


@pytest.mark.parametrize("dtype, atol", [("f32", 1e-4), ("f16", 5e-2), ("q8_0", 0.25)])
def test_llama_cpp_graph_from_the_file_gives_our_logits(tmp_path: Path, dtype: str, atol: float) -> None:
    arch = ARCHS[0]
    model = _perturbed(arch)
    path = export_gguf(model, ByteTokenizer(), tmp_path / "m.gguf", dtype).path  # type: ignore[arg-type]
    ids = ByteTokenizer().encode("def f(x):\n\treturn x * 2  # é\n")[: arch.context_length]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].double().numpy()
    theirs = _llama_cpp_logits(path, ids)
    assert np.abs(ours).max() > 2.0  # a meaningful comparison
    assert np.abs(ours - theirs).max() < atol
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > (0.99 if dtype == "f32" else 0.9)
    # the permutation is what makes it work: the same file read with Hugging Face's RoPE layout is another model
    assert np.abs(ours - _llama_cpp_logits(path, ids, adjacent_pairs=False)).max() > 20 * atol


def test_types_per_output_type(tmp_path: Path) -> None:
    arch = ArchConfig(n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, d_ff=80, context_length=32)  # 80: not 32-blocks
    model = _perturbed(arch)
    sizes = {}
    for dtype in GGUF_TYPES:
        done = export_gguf(model, ByteTokenizer(), tmp_path / f"{dtype}.gguf", dtype)
        r = gguf.GGUFReader(done.path)
        got = {t.name: t.tensor_type.name for t in r.tensors}
        assert got == done.tensor_types
        assert got["blk.0.attn_norm.weight"] == got["output_norm.weight"] == "F32"
        assert _field(r, "general.file_type") == int(
            {
                "f32": gguf.LlamaFileType.ALL_F32,
                "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            }[dtype]
        )
        sizes[dtype] = done.size_bytes
    q8 = gguf.GGUFReader(tmp_path / "q8_0.gguf")
    kinds = {t.name: t.tensor_type.name for t in q8.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == kinds["blk.0.ffn_gate.weight"] == "Q8_0"
    assert kinds["blk.0.ffn_down.weight"] == "F16"  # rows of 80 values do not split into Q8_0's 32-value blocks
    assert _field(q8, "general.quantization_version") == gguf.GGML_QUANT_VERSION
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]
    w = dict(gguf_tensors(model))["blk.0.attn_v.weight"].numpy()
    back = _weights(q8)["blk.0.attn_v.weight"]
    block_max = np.abs(w.reshape(-1, 32)).max(-1, keepdims=True)
    # within half a Q8_0 step (the block's max / 127), plus the step's own float16 rounding
    assert (np.abs(back - w).reshape(-1, 32) <= block_max / 127 * 0.6).all()
    assert np.abs(back - w).max() > 0  # quantized, not stored as floats


def test_permute_rope_pairs_halves_into_neighbours() -> None:
    hd, heads = 8, 3
    w = torch.arange(heads * hd, dtype=torch.float32)[:, None].repeat(1, 2)
    p = permute_rope(w, heads)
    # within each head, rows (j, j + hd/2) of the rotate-half layout become rows (2j, 2j + 1)
    assert p[:hd, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert p[hd : 2 * hd, 0].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]
    assert torch.equal(unpermute_rope(p, heads), w)


@pytest.mark.parametrize(
    "fields, reason",
    [({"norm": "layernorm"}, "RMSNorm"), ({"activation": "gelu"}, "SwiGLU"), ({"pos": "learned"}, "RoPE")],
)
def test_non_llama_models_are_refused_without_a_file(tmp_path: Path, fields: dict, reason: str) -> None:
    model = build_model(ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, **fields))
    with pytest.raises(NotGGUFExportable, match=reason):
        export_gguf(model, ByteTokenizer(), tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_bad_tokenizers_and_paths_are_refused(tmp_path: Path, small_corpus_dir: Path) -> None:
    model = _perturbed(ARCHS[0])
    bpe = train_bpe([p.read_text() for p in sorted(small_corpus_dir.rglob("*.py"))[:3]], 300)
    with pytest.raises(UserError, match="256 tokens, its tokenizer 300"):
        export_gguf(model, bpe, tmp_path / "m.gguf")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    other = HFTokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    spm_like: Tokenizer = BPETokenizer(other)
    small = build_model(ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, vocab_size=3))
    with pytest.raises(NotGGUFExportable, match="pre-tokenizer is Whitespace"):
        export_gguf(small, spm_like, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="f32, f16, q8_0"):
        export_gguf(model, ByteTokenizer(), tmp_path / "m.gguf", "int4")  # type: ignore[arg-type]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        export_gguf(model, ByteTokenizer(), tmp_path / "file" / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_dtypes_are_the_exporters() -> None:
    assert export_cli.GGUF_DTYPES == GGUF_TYPES


def test_autonas_export_writes_gguf_and_hf(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tiny.gguf"
    res = runner.invoke(app, ["export", str(tiny_run), "--gguf", "--dtype", "f32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = gguf.GGUFReader(out)
    assert _field(r, "general.name") == tiny_run.name and _field(r, "tokenizer.ggml.tokens") == byte_level_symbols()
    from nas.run_folder import load_trained_model

    model, _ = load_trained_model(tiny_run)
    ids = ByteTokenizer().encode("import os\n")
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(ours - _llama_cpp_logits(out, ids)).max() < 1e-4  # the trained weights, not an init
    again = runner.invoke(app, ["export", str(tiny_run), "--gguf", "--dtype", "f32", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output

    hf_dir = tmp_path / "hf"
    res = runner.invoke(app, ["export", str(tiny_run), "--hf", "--out", str(hf_dir)])
    assert res.exit_code == 0, res.output
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(hf_dir).encode("\tx = 'é'\n") == ByteTokenizer().encode("\tx = 'é'\n")


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["export", "{missing}", "--gguf"], "does not exist"),
        (["export", "{run}"], "say what to export"),
        (["export", "{run}", "--gguf", "--hf", "--out", "{tmp}/x"], "--out names one output"),
        (["export", "{run}", "--gguf", "--dtype", "q4"], "--dtype 'q4'"),
        (["export", "{run}", "--gguf", "--out", "{tmp}"], "is a folder"),
        (["export", "{empty}", "--gguf", "--out", "{tmp}/x.gguf"], "not a finished run"),
    ],
    ids=["missing", "no-format", "two-outs", "dtype", "out-folder", "not-a-run"],
)
def test_autonas_export_refuses_in_one_line(tiny_run: Path, tmp_path: Path, argv: list[str], phrase: str) -> None:
    (tmp_path / "empty").mkdir()
    world = {
        "missing": str(tmp_path / "nope"),
        "run": str(tiny_run),
        "tmp": str(tmp_path),
        "empty": str(tmp_path / "empty"),
    }
    args = [a.format(**world) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], proc.stderr
    assert not list(tmp_path.glob("*.gguf")) and not list(Path(tiny_run).glob("*.gguf"))


def test_autonas_export_refuses_a_non_llama_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    arch = ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, norm="layernorm", activation="gelu")
    (run / "arch.json").write_text(arch.to_json())
    from safetensors.torch import save_model

    save_model(build_model(arch), str(run / "model.safetensors"))
    res = CliRunner().invoke(app, ["export", str(run), "--gguf"])
    assert res.exit_code == 2 and "not Llama-shaped" in res.output and "RMSNorm" in res.output
    assert sorted(p.name for p in run.iterdir()) == ["arch.json", "model.safetensors"]


def test_llama_cpp_runs_the_file(tmp_path: Path, small_corpus_bpe: BPETokenizer) -> None:
    """Where llama.cpp's Python binding is installed (it builds from source, so not on every machine): llama.cpp
    itself loads the file, tokenizes text to our ids and computes our logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    text = "def área(r):\n\treturn 3.14 * r  *  r  # π ∑ 🐍\n"
    bpe = small_corpus_bpe
    # every shape with the byte tokenizer (GQA, MQA with its own head, pruned heads), and a BPE
    cases: list[tuple[Tokenizer, ArchConfig]] = [(ByteTokenizer(), a) for a in ARCHS] + [(bpe, ARCHS[0])]
    for tokenizer, shape in cases:
        arch = shape.model_copy(update={"vocab_size": tokenizer.vocab_size})
        model = _perturbed(arch)
        path = export_gguf(model, tokenizer, tmp_path / f"{tokenizer.name}-{arch.short_hash()}.gguf", "f32").path
        llm = llama_cpp.Llama(str(path), n_ctx=arch.context_length, logits_all=True, n_threads=1, verbose=False)
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert ids == tokenizer.encode(text), tokenizer.name
        assert llm.tokenize(b"x", add_bos=True)[0] == tokenizer.eos_id  # the separator goes in front of a prompt
        assert llm.detokenize(ids).decode() == text
        ids = ids[: arch.context_length]
        llm.eval(ids)
        theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].double().numpy()
        # llama.cpp keeps its KV cache in float16 by default: agreement to that precision, on logits of size ~3
        assert np.abs(ours).max() > 2.0 and np.abs(ours - theirs).max() < 2e-2, tokenizer.name
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.95, tokenizer.name
