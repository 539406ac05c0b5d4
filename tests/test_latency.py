"""Decode latency modes: the static-shape step computes what the model's own cached forward computes."""

from __future__ import annotations

import pytest
import torch

from harness.errors import UserError
from kernels.latency import StaticDecodeStep, cpu_threads, measure_decode
from nas.model import build_model
from nas.space import ArchConfig

GQA = ArchConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, context_length=64)
LEARNED = ArchConfig(
    n_layers=2,
    d_model=48,
    n_heads=3,
    n_kv_heads=3,
    d_ff=96,
    pos="learned",
    norm="layernorm",
    activation="gelu",
    tie_embeddings=False,
    context_length=64,
)


@pytest.mark.parametrize("arch", [GQA, LEARNED], ids=["rope-gqa", "learned-mha"])
def test_static_step_matches_the_cached_forward(arch: ArchConfig) -> None:
    model = build_model(arch, seed=0).eval()
    prompt = torch.randint(0, arch.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_cache, cache = model.new_cache(1), model.new_cache(1)
        model(prompt, ref_cache)
        model(prompt, cache)
        step = StaticDecodeStep(model, cache)
        token = prompt[:, -1:]
        for pos in range(9, 40):
            ref = model(token, ref_cache)[:, -1]
            logits, nxt = step(token, torch.tensor([pos]))
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            assert int(nxt) == int(ref.argmax(-1))
            token = nxt


def test_modes_agree_on_the_greedy_continuation_and_report_percentiles() -> None:
    model = build_model(GQA, seed=0)
    eager = measure_decode(model, "eager", prompt_tokens=8, decode_tokens=12, warmup=1, repeats=2, threads=1)
    static = measure_decode(model, "static", prompt_tokens=8, decode_tokens=12, warmup=1, repeats=2, threads=1)
    assert eager.tokens == static.tokens and len(eager.tokens) == 12
    assert eager.tokens_equal_eager is None and static.tokens_equal_eager == 12 and static.agrees_with_eager
    for r in (eager, static):
        assert r.threads == 1 and 0 < r.decode_ms_p50 <= r.decode_ms_p90 and 0 < r.prefill_ms_p50 <= r.prefill_ms_p90


def test_a_mode_that_decodes_other_tokens_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast mode that picks other tokens than the model measures nothing: the result says so."""
    import kernels.latency as latency

    real = latency._stepper

    def drifting(model, cache, mode):  # type: ignore[no-untyped-def]
        step = real(model, cache, mode)
        return lambda token, position: (step(token, position) + 1) % model.arch.vocab_size

    monkeypatch.setattr(latency, "_stepper", drifting)
    r = measure_decode(
        build_model(GQA, seed=0), "static", prompt_tokens=8, decode_tokens=12, warmup=0, repeats=1, threads=1
    )
    assert r.tokens_equal_eager is not None and r.tokens_equal_eager < 12 and not r.agrees_with_eager
    assert r.as_dict()["tokens_equal_eager"] == r.tokens_equal_eager


def test_thread_setting_is_restored_and_bad_modes_are_one_line() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    model = build_model(GQA, seed=0)
    with pytest.raises(UserError, match="cuda-graph latency needs the model on a CUDA device"):
        measure_decode(model, "cuda-graph")
    with pytest.raises(UserError, match="unknown latency mode"):
        measure_decode(model, "turbo")


@pytest.mark.slow
def test_compiled_static_step_agrees_on_cpu() -> None:
    model = build_model(GQA, seed=0)
    eager = measure_decode(model, "eager", prompt_tokens=8, decode_tokens=10, warmup=1, repeats=1)
    compiled = measure_decode(model, "compile", prompt_tokens=8, decode_tokens=10, warmup=1, repeats=1)
    assert compiled.tokens == eager.tokens


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_agrees_with_eager_on_gpu() -> None:
    model = build_model(GQA, seed=0).cuda()
    eager = measure_decode(model, "eager", prompt_tokens=8, decode_tokens=16, warmup=1, repeats=2)
    graph = measure_decode(model, "cuda-graph", prompt_tokens=8, decode_tokens=16, warmup=1, repeats=2)
    assert graph.tokens == eager.tokens
