"""Triton kernels against their PyTorch references, under the Triton interpreter on CPU."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined: @triton.jit reads it then

import pytest
import torch

pytest.importorskip("triton")  # a dev dependency: CI installs it, so these run there

from kernels.quant import quantize_per_channel
from triton_ops import use_triton
from triton_ops.ops import (
    fkl_reference,
    fused_fkl,
    int8_linear,
    int8_linear_reference,
    rmsnorm,
    rmsnorm_reference,
    swiglu,
    swiglu_reference,
)


def test_the_interpreter_is_in_use() -> None:
    assert use_triton(torch.zeros(1))


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 48), (1, 130)])
def test_rmsnorm_matches_reference(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    w = torch.rand(shape[-1]) + 0.5
    assert torch.allclose(rmsnorm(x, w, 1e-5), rmsnorm_reference(x, w, 1e-5), atol=1e-5, rtol=1e-5)


def test_swiglu_matches_reference() -> None:
    g, u = torch.randn(3, 1500), torch.randn(3, 1500)
    assert torch.allclose(swiglu(g, u), swiglu_reference(g, u), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("m,k,n", [(1, 64, 96), (5, 70, 33), (17, 128, 64)])
def test_int8_matmul_matches_reference(m: int, k: int, n: int) -> None:
    x = torch.randn(m, k)
    q, scale = quantize_per_channel(torch.randn(n, k))
    got, want = int8_linear(x, q, scale), int8_linear_reference(x, q, scale)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("temperature,block", [(1.0, 64), (2.0, 32)])
def test_fused_kd_loss_and_gradient_match_reference(temperature: float, block: int) -> None:
    s = torch.randn(2, 3, 150, dtype=torch.float32, requires_grad=True)
    t = torch.randn(2, 3, 150) * 2
    s_ref = s.detach().clone().requires_grad_(True)
    loss = fused_fkl(s, t, temperature, block)  # 150 is not a multiple of the block: the tail chunk is masked
    ref = fkl_reference(s_ref, t, temperature)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-6)
    loss.backward()
    ref.backward()
    assert torch.allclose(s.grad, s_ref.grad, atol=1e-6, rtol=1e-4)


def test_kd_loss_runs_the_fused_kernel_and_agrees_with_its_formula() -> None:
    """distill.losses.kd_loss_full: forward KL without a mask takes the fused kernel where Triton runs (here,
    the interpreter); an all-ones mask takes the plain formula. Same loss, same gradient."""
    from distill.losses import KDLossConfig, kd_loss_full

    cfg = KDLossConfig(kind="fkl", temperature=2.0, ce_weight=0.3)
    s = torch.randn(2, 3, 150, requires_grad=True)
    s_ref = s.detach().clone().requires_grad_(True)
    t, y = torch.randn(2, 3, 150), torch.randint(0, 150, (2, 3))
    fused, parts = kd_loss_full(s, t, y, cfg)
    plain, ref_parts = kd_loss_full(s_ref, t, y, cfg, mask=torch.ones(2, 3))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-4)
    assert parts["kd"] == pytest.approx(ref_parts["kd"], rel=1e-4)
    fused.backward()
    plain.backward()
    assert torch.allclose(s.grad, s_ref.grad, atol=1e-5)
