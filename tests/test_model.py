import pytest
import torch

from harness.tokenizer import ByteTokenizer
from nas.model import build_model
from nas.space import ArchConfig

VARIANTS = [
    ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=128, context_length=64),
    ArchConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        context_length=64,
        activation="gelu",
        norm="layernorm",
    ),
    ArchConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=1,
        d_ff=128,
        context_length=64,
        pos="learned",
        tie_embeddings=False,
    ),
]


@pytest.mark.parametrize("arch", VARIANTS, ids=lambda a: a.describe())
def test_kv_cache_matches_full_forward(arch):
    model = build_model(arch, seed=0).eval()
    x = torch.randint(0, arch.vocab_size, (2, 40))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        parts = [model(x[:, :17], cache), model(x[:, 17:30], cache)] + [
            model(x[:, i : i + 1], cache) for i in range(30, 40)
        ]
    assert cache.pos == 40
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_forward_is_causal():
    arch = VARIANTS[0]
    model = build_model(arch, seed=0).eval()
    x = torch.randint(0, 256, (1, 32))
    y = x.clone()
    y[0, 20:] = (y[0, 20:] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :20], model(y)[:, :20])


def test_too_long_sequence_is_refused():
    model = build_model(VARIANTS[0])
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_greedy_generation_is_deterministic_and_stops_at_eos():
    arch = VARIANTS[0]
    model = build_model(arch, seed=1)
    a = model.generate([10, 20, 30], max_new_tokens=20, temperature=0)
    b = model.generate([10, 20, 30], max_new_tokens=20, temperature=0)
    assert a.tokens == b.tokens and len(a.tokens) == 20 and a.stop_reason == "max_tokens"
    eos = a.tokens[5]
    c = model.generate([10, 20, 30], max_new_tokens=20, temperature=0, eos_id=eos)
    assert c.stop_reason == "eos" and eos not in c.tokens and c.tokens == a.tokens[: a.tokens.index(eos)]


def test_greedy_matches_argmax_of_full_forward():
    model = build_model(VARIANTS[1], seed=2).eval()
    prompt = [5, 6, 7, 8]
    out = model.generate(prompt, max_new_tokens=8, temperature=0).tokens
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt) :]


def test_stop_strings_cut_the_text():
    tok = ByteTokenizer()
    model = build_model(VARIANTS[0], seed=3)
    free = model.generate(tok.encode("def f():"), 30, temperature=0, decode=tok.decode)
    stop = free.text[10:12]
    cut = model.generate(tok.encode("def f():"), 30, temperature=0, decode=tok.decode, stop=[stop])
    assert cut.stop_reason == "stop_string" and stop not in cut.text and free.text.startswith(cut.text)


def test_top_p_and_temperature_sampling():
    model = build_model(VARIANTS[0], seed=4)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = model.generate([1, 2], 30, temperature=1.0, top_p=0.9, generator=g1).tokens
    b = model.generate([1, 2], 30, temperature=1.0, top_p=0.9, generator=g2).tokens
    assert a == b
    # a tiny nucleus keeps only the most likely token: identical to greedy
    assert (
        model.generate([1, 2], 30, temperature=1.0, top_p=1e-9).tokens
        == model.generate([1, 2], 30, temperature=0).tokens
    )


def test_generation_slides_past_the_context():
    arch = VARIANTS[2]  # learned positions: positions must never exceed the table
    model = build_model(arch, seed=5)
    out = model.generate(list(range(1, 100)), max_new_tokens=150, temperature=0)
    assert len(out.tokens) == 150 and out.prompt_tokens_used == arch.context_length - 1
