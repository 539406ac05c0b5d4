"""Triton kernels with PyTorch references.

Each public function runs its Triton kernel when Triton can run on the tensors (CUDA tensors, or any
tensors under ``TRITON_INTERPRET=1``, which is how CI checks the kernels on a CPU) and the PyTorch
reference otherwise, so callers never need to know whether Triton or a GPU is present.
"""

from __future__ import annotations

import os

import torch


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton compiles for CUDA; its interpreter runs anywhere (correctness only, not speed). The cheap
    checks come first, so a CPU-only caller never pays for importing triton."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not all(t.is_cuda for t in tensors):
        return False
    return triton_available()
