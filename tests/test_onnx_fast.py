"""The ONNX decode step over a preallocated cache: written in place, equal to PyTorch's cache, bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import UserError
from kernels.onnx_export import OnnxDecoder, empty_cache, export_decode_step, quantize_onnx_int8, torch_nll_nats
from nas.model import build_model
from nas.space import ArchConfig

GQA = ArchConfig(
    n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, activation="swiglu", norm="rmsnorm", context_length=32
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = build_model(GQA, seed=0).eval()
    return model, export_decode_step(model, tmp_path_factory.mktemp("onnx"))


def test_the_cache_is_written_in_place_with_the_keys_pytorch_caches(exported: tuple) -> None:
    model, path = exported
    dec = OnnxDecoder(path, model, threads=1)
    tokens = [5, 17, 200, 3, 99]
    buffers = [c.ctypes.data for c in dec.cache]
    for t in tokens:
        dec.next_logits(t)
    assert [c.ctypes.data for c in dec.cache] == buffers  # the same buffers, filled by the graph itself
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.tensor([tokens]), cache)
    for i in range(GQA.n_layers):
        assert np.allclose(dec.cache[2 * i][:, :, : len(tokens)], cache.k[i][:, :, : len(tokens)].numpy(), atol=1e-5)
        assert np.allclose(
            dec.cache[2 * i + 1][:, :, : len(tokens)], cache.v[i][:, :, : len(tokens)].numpy(), atol=1e-5
        )


def test_stateless_step_and_next_logits_agree_and_reset_starts_over(exported: tuple) -> None:
    model, path = exported
    dec = OnnxDecoder(path, model, threads=1)
    past_k, past_v = empty_cache(model)
    stepped = []
    for pos, t in enumerate([7, 8, 9]):
        logits, past_k, past_v = dec.step(t, pos, past_k, past_v)
        stepped.append(logits)
    assert past_k.shape == (GQA.n_layers, GQA.n_kv_heads, 3, GQA.head_dim)
    dec.reset()
    again = [dec.next_logits(t).copy() for t in [7, 8, 9]]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(stepped, again, strict=True))
    with torch.no_grad():
        ref = model(torch.tensor([[7, 8, 9]]))[0].numpy()
    assert np.allclose(np.stack(again), ref, atol=1e-4)


def test_a_full_cache_is_one_clear_error(exported: tuple) -> None:
    model, path = exported
    dec = OnnxDecoder(path, model, threads=1)
    for _ in range(GQA.context_length):
        dec.next_logits(1)
    with pytest.raises(UserError, match="holds 32 positions"):
        dec.next_logits(1)


def test_int8_scores_within_one_percent_of_torch(exported: tuple) -> None:
    model, path = exported
    tokens = np.random.default_rng(1).integers(1, 255, GQA.context_length)
    ref = torch_nll_nats(model, tokens).mean()
    int8 = OnnxDecoder(quantize_onnx_int8(path), model, threads=1).nll_nats(tokens).mean()
    assert abs(int8 - ref) < 0.01 * ref
