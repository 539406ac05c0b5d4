"""Fused RMSNorm, fused SwiGLU, weight-only INT8 matmul and a chunked fused KD loss.

The references are the definitions; the Triton kernels must agree with them (tests/test_triton.py,
run under ``TRITON_INTERPRET=1`` on CPU). Kernels work on 2-D row-major views; callers' leading
dimensions are flattened.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triton_ops import use_triton

# ---------------------------------------------------------------------------------------- references


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def int8_linear_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale[:, None]).T`` with ``q`` int8 ``[N, K]`` and one scale per output channel."""
    return (x.float() @ qweight.float().t()) * scale.float()


def fkl_reference(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over rows of KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton's forward KD term)."""
    t_logp = F.log_softmax(teacher.float() / temperature, -1)
    s_logp = F.log_softmax(student.float() / temperature, -1)
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean() * temperature**2


# ------------------------------------------------------------------------------------------- kernels

try:
    import triton
    import triton.language as tl

    @triton.jit
    def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        tl.store(y_ptr + row * n_cols + cols, x * inv * w, mask=mask)

    @triton.jit
    def _swiglu_kernel(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, g * tl.sigmoid(g) * u, mask=mask)

    @triton.jit
    def _int8_matmul_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            q = tl.load(q_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K), other=0)
            acc += tl.dot(x.to(tl.float32), q.to(tl.float32))
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc * s[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _fkl_kernel(s_ptr, t_ptr, loss_ptr, grad_ptr, V, inv_t, BLOCK: tl.constexpr):
        """One row: streaming log-sum-exp of both distributions over vocabulary chunks, then the KL
        and its gradient w.r.t. the student logits (q - p) / T, without holding a full row."""
        row = tl.program_id(0)
        base = row * V
        m_s = -float("inf")
        m_t = -float("inf")
        z_s = 0.0
        z_t = 0.0
        for c in range(0, V, BLOCK):
            cols = c + tl.arange(0, BLOCK)
            mask = cols < V
            s = tl.load(s_ptr + base + cols, mask=mask, other=-float("inf")).to(tl.float32) * inv_t
            t = tl.load(t_ptr + base + cols, mask=mask, other=-float("inf")).to(tl.float32) * inv_t
            new_s = tl.maximum(m_s, tl.max(s, axis=0))
            new_t = tl.maximum(m_t, tl.max(t, axis=0))
            z_s = z_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s), axis=0)
            z_t = z_t * tl.exp(m_t - new_t) + tl.sum(tl.exp(t - new_t), axis=0)
            m_s = new_s
            m_t = new_t
        lse_s = m_s + tl.log(z_s)
        lse_t = m_t + tl.log(z_t)
        kl = 0.0
        for c in range(0, V, BLOCK):
            cols = c + tl.arange(0, BLOCK)
            mask = cols < V
            s = tl.load(s_ptr + base + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
            t = tl.load(t_ptr + base + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
            lp_s = s - lse_s
            lp_t = t - lse_t
            p = tl.exp(lp_t)
            kl += tl.sum(tl.where(mask, p * (lp_t - lp_s), 0.0), axis=0)
            tl.store(grad_ptr + base + cols, (tl.exp(lp_s) - p) * inv_t, mask=mask)
        tl.store(loss_ptr + row, kl)

    _HAVE_TRITON = True
except ImportError:  # the references serve
    _HAVE_TRITON = False


def _block(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    if not (_HAVE_TRITON and use_triton(x, weight)):
        return rmsnorm_reference(x, weight, eps)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.empty_like(x2, dtype=torch.float32)
    _rmsnorm_kernel[(x2.shape[0],)](x2, weight.contiguous(), y, x2.shape[1], eps, BLOCK=_block(x2.shape[1]))
    return y.to(x.dtype).reshape(x.shape)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if not (_HAVE_TRITON and use_triton(gate, up)):
        return swiglu_reference(gate, up)
    g, u = gate.contiguous(), up.contiguous()
    y = torch.empty_like(g, dtype=torch.float32)
    n = g.numel()
    _swiglu_kernel[(triton.cdiv(n, 1024),)](g, u, y, n, BLOCK=1024)
    return y.to(gate.dtype)


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if not (_HAVE_TRITON and use_triton(x, qweight, scale)):
        return int8_linear_reference(x, qweight, scale)
    x2 = x.reshape(-1, x.shape[-1]).float().contiguous()
    m, k = x2.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, 16), triton.cdiv(n, 32))
    _int8_matmul_kernel[grid](x2, qweight.contiguous(), scale.float().contiguous(), y, m, n, k, BM=16, BN=32, BK=32)
    return y.reshape(*x.shape[:-1], n)


class _FusedFKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, block: int) -> torch.Tensor:
        s2 = student.reshape(-1, student.shape[-1]).contiguous()
        t2 = teacher.reshape(-1, teacher.shape[-1]).contiguous()
        rows, v = s2.shape
        loss = torch.empty(rows, dtype=torch.float32, device=s2.device)
        grad = torch.empty(rows, v, dtype=torch.float32, device=s2.device)
        _fkl_kernel[(rows,)](s2, t2, loss, grad, v, 1.0 / temperature, BLOCK=block)
        ctx.save_for_backward(grad)
        ctx.scale = temperature**2 / rows
        ctx.shape, ctx.dtype = student.shape, student.dtype
        return loss.sum() * ctx.scale

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * (g * ctx.scale)).reshape(ctx.shape).to(ctx.dtype), None, None, None


def fused_fkl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, block: int = 1024
) -> torch.Tensor:
    """Forward-KL KD loss (as :func:`fkl_reference`), streaming the vocabulary in ``block`` chunks."""
    if not (_HAVE_TRITON and use_triton(student, teacher)):
        return fkl_reference(student, teacher, temperature)
    return _FusedFKL.apply(student, teacher.detach(), temperature, block)
