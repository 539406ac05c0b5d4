import math

import numpy as np
import pytest
import torch

from harness.data import CorpusSpec, prepare_corpus
from harness.metrics import eval_token_count, evaluate_bpb, measure_latency
from nas.counting import arch_metrics
from nas.model import build_model
from nas.space import ArchConfig


@pytest.fixture(scope="module")
def corpus(small_corpus_dir):
    return prepare_corpus(CorpusSpec(source=str(small_corpus_dir)), "byte")


def test_random_init_byte_model_is_near_uniform(corpus):
    # Untied output head: logits at init are ~0, so every byte costs ~log2(256) = 8 bits.
    arch = ArchConfig(
        n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=128, context_length=128, tie_embeddings=False
    )
    r = evaluate_bpb(build_model(arch, seed=0), corpus["val"], corpus.token_bytes, max_bytes=20_000)
    assert abs(r.bpb - 8.0) < 0.05
    assert r.bytes == r.tokens == min(20_000, corpus["val"].size) - 1  # every token after the first, once


def test_uniform_logits_score_exactly_eight_bits(corpus):
    model = build_model(ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=64))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    r = evaluate_bpb(model, corpus["val"], corpus.token_bytes, max_bytes=5_000)
    assert r.bpb == pytest.approx(8.0, abs=1e-5)
    assert r.loss_per_token == pytest.approx(math.log(256), abs=1e-5)


def test_bpb_matches_a_direct_computation(corpus):
    arch = ArchConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, context_length=32)
    model = build_model(arch, seed=1).eval()
    toks = np.asarray(corpus["val"][:97], dtype=np.int64)
    r = evaluate_bpb(model, corpus["val"], corpus.token_bytes, max_bytes=97, batch_size=2)
    nats = 0.0
    with torch.no_grad():
        for s in range(0, 96, 32):
            x = torch.tensor(toks[s : min(s + 32, 96)])[None]
            y = torch.tensor(toks[s + 1 : min(s + 33, 97)])
            nats += torch.nn.functional.cross_entropy(model(x)[0], y, reduction="sum").item()
    assert r.tokens == 96
    assert r.bpb == pytest.approx(nats / math.log(2) / 96, rel=1e-5)


def test_eval_cap_is_in_bytes():
    tb = np.array([1, 3, 5], dtype=np.int32)
    toks = np.array([0, 1, 2, 1, 0, 2], dtype=np.uint8)  # bytes 1,3,5,3,1,5
    assert eval_token_count(toks, tb, 9) == 3
    assert eval_token_count(toks, tb, 8) == 2
    assert eval_token_count(toks, tb, None) == 6


def test_latency_and_arch_metrics():
    arch = ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, context_length=64)
    lat = measure_latency(build_model(arch), prompt_tokens=16, decode_tokens=8, warmup=1, repeats=2)
    assert 0 < lat.decode_ms_p50 <= lat.decode_ms_p90 and 0 < lat.prefill_ms_p50 <= lat.prefill_ms_p90
    assert lat.decode_tokens == 8 and set(lat.as_metrics()) == {
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_prefill_p50",
        "latency_ms_prefill_p90",
        "latency_ms_p50_min",
        "latency_ms_p50_max",
        "latency_ms_spread",
        "latency_repeats",
        "latency_device",
    }
    assert len(lat.decode_ms_p50_repeats) == 2 and lat.decode_ms_p50_min <= lat.decode_ms_p50 <= lat.decode_ms_p50_max
    m = arch_metrics(arch)
    assert m["params"] == sum(p.numel() for p in build_model(arch).parameters())
    assert m["size_bytes_fp16"] * 2 == m["size_bytes_fp32"] and m["size_bytes_int8"] < m["size_bytes_fp16"]
