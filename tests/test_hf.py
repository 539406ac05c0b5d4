import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.tokenizer import train_bpe
from nas.hf import NotExportable, export_hf, load_hf_as_codelm, to_hf_config
from nas.model import build_model
from nas.space import ArchConfig

LLAMA_ARCHS = [
    ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=160, context_length=64),
    ArchConfig(n_layers=3, d_model=96, n_heads=6, n_kv_heads=2, d_ff=256, context_length=128, tie_embeddings=False),
    ArchConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_ff=128, context_length=64, rope_theta=500.0),
]


def _perturbed(arch: ArchConfig):
    """Random weights everywhere (norm weights too), so the check covers more than the init."""
    model = build_model(arch, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else 0.08) + (1.0 if p.dim() == 1 else 0.0)
            )
    return model.eval()


@pytest.mark.parametrize("arch", LLAMA_ARCHS, ids=lambda a: a.describe())
def test_hf_logits_match(tmp_path, arch):
    model = _perturbed(arch)
    export_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, arch.vocab_size, (2, arch.context_length))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.abs().max() > 1.0  # a meaningful comparison, not two near-zero tensors
    assert (ours - theirs).abs().max().item() < 1e-4
    back = load_hf_as_codelm(tmp_path / "hf")
    assert back.arch == arch
    with torch.no_grad():
        assert (back(x) - ours).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "fields, reason",
    [({"norm": "layernorm"}, "Llama uses RMSNorm"), ({"activation": "gelu"}, "SwiGLU"), ({"pos": "learned"}, "RoPE")],
)
def test_non_llama_archs_say_why(fields, reason):
    with pytest.raises(NotExportable, match=reason):
        to_hf_config(ArchConfig(**fields))


def test_bpe_tokenizer_exports_with_model(tmp_path, small_corpus_dir):
    texts = [p.read_text() for p in sorted(small_corpus_dir.rglob("*.py"))]
    tok = train_bpe(texts, 512)
    arch = ArchConfig(
        n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, vocab_size=tok.vocab_size, context_length=32
    )
    export_hf(build_model(arch), tmp_path / "hf", tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    code = "def add(a, b):\n    return a + b\n"
    assert hf_tok(code)["input_ids"] == tok.encode(code)
    assert hf_tok.eos_token_id == tok.eos_id
