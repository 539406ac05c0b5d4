"""The decode floor's two halves: weight bytes per token (exact, counted by hand) and a measured bandwidth."""

from __future__ import annotations

import math

import pytest

from kernels.bandwidth import measure_bandwidth, weight_bytes_per_token
from nas.model import build_model
from nas.space import ArchConfig

TINY = ArchConfig(
    n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_ff=64, activation="swiglu", norm="rmsnorm", vocab_size=256
)


def test_weight_bytes_per_token_counted_by_hand() -> None:
    # linear weights: q, k, v, o 32x32 each (4096), gate/up 64x32 and down 32x64 (6144), lm_head 256x32 (8192)
    linear = 4 * 32 * 32 + 3 * 64 * 32 + 256 * 32  # 18432 parameters
    rows = 4 * 32 + 64 + 64 + 32 + 256  # output channels, one fp32 scale each in int8: 544
    norms = 3 * 32 * 4  # two per layer + the final one, fp32
    tied = build_model(TINY, seed=0)  # tied: the embedding row is inside lm_head's matrix, read anyway
    assert weight_bytes_per_token(tied, "fp32") == 4 * linear + norms == 74112
    assert weight_bytes_per_token(tied, "int8") == linear + 4 * rows + norms == 20992
    untied = build_model(TINY.model_copy(update={"tie_embeddings": False}), seed=0)
    assert weight_bytes_per_token(untied, "fp32") == 74112 + 32 * 4  # plus one fp32 embedding row, not the table
    learned = build_model(TINY.model_copy(update={"pos": "learned"}), seed=0)
    assert weight_bytes_per_token(learned, "int8") == 20992 + 32 * 4  # plus this position's row


def test_bandwidth_is_measured_and_the_floor_scales_with_the_bytes() -> None:
    bw = measure_bandwidth(threads=1, array_mib=16, rounds=2)
    assert math.isfinite(bw.gb_per_s_best) and bw.gb_per_s_best > 0
    assert 0 < bw.gb_per_s_median <= bw.gb_per_s_best
    assert bw.threads == 1 and bw.array_bytes == 16 * 2**20
    assert bw.floor_ms(2_000_000) == pytest.approx(2 * bw.floor_ms(1_000_000))
    assert bw.floor_ms(10**9) == pytest.approx(1e3 / bw.gb_per_s_best)  # 1 GB at the measured GB/s
