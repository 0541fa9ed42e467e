"""Triton kernels for the two elementwise passes of :mod:`.grn_mlp` (same interface as ``TorchOps``).

Each program owns one (image, block of rows, block of channels) tile of a contiguous (N, L, K) tensor.
Forward: GELU and the tile's partial sums of squares (one read of ``h``, one write of ``a``; the partials,
(N, row blocks, K) fp32, are summed by torch: deterministic, no atomics). Backward: ``dh = (da + a * r) *
gelu'(h)`` with ``a`` recomputed from ``h`` and rounded to its dtype, as the forward stored it. Arithmetic
in fp32. ``TRITON_INTERPRET=1`` runs them on CPU tensors (that is how the tests check them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_L = 64
BLOCK_K = 64
_RSQRT2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_RSQRT2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)


@triton.jit
def _gelu_sumsq_kernel(h_ptr, a_ptr, part_ptr, L, K, num_lb,
                       BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0)
    lb = tl.program_id(1)
    kb = tl.program_id(2)
    rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < L) & (cols[None, :] < K)
    offs = n.to(tl.int64) * L * K + rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = (0.5 * x * (1.0 + tl.math.erf(x * _RSQRT2))).to(a_ptr.dtype.element_ty)
    tl.store(a_ptr + offs, a, mask=mask)
    af = a.to(tl.float32)
    part = tl.sum(af * af, axis=0)
    tl.store(part_ptr + (n.to(tl.int64) * num_lb + lb) * K + cols, part, mask=cols < K)


@triton.jit
def _gelu_grad_kernel(h_ptr, da_ptr, r_ptr, dh_ptr, L, K,
                      BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(0)
    lb = tl.program_id(1)
    kb = tl.program_id(2)
    rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < L) & (cols[None, :] < K)
    offs = n.to(tl.int64) * L * K + rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    da = tl.load(da_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + n * K + cols, mask=cols < K, other=0.0)
    cdf = 0.5 * (1.0 + tl.math.erf(x * _RSQRT2))
    a = (x * cdf).to(h_ptr.dtype.element_ty).to(tl.float32)  # as the forward stored it
    dgelu = cdf + x * tl.exp(-0.5 * x * x) * _RSQRT2PI
    dh = (da + a * r[None, :]) * dgelu
    tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)


def _grid(h: torch.Tensor) -> tuple[int, int, int]:
    n, length, k = h.shape
    return n, triton.cdiv(length, BLOCK_L), triton.cdiv(k, BLOCK_K)


class TritonOps:
    """The two passes as Triton kernels; inputs (N, L, K) contiguous, ``r`` (N, K) fp32."""

    @staticmethod
    def gelu_sumsq(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, k = h.shape
        grid = _grid(h)
        a = torch.empty_like(h)
        part = torch.empty((n, grid[1], k), device=h.device, dtype=torch.float32)
        _gelu_sumsq_kernel[grid](h, a, part, length, k, grid[1], BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return a, part.sum(dim=1)

    @staticmethod
    def gelu_grad(h: torch.Tensor, a: torch.Tensor, da: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        n, length, k = h.shape
        dh = torch.empty_like(h)
        _gelu_grad_kernel[_grid(h)](h, da.contiguous(), r.contiguous(), dh, length, k,
                                    BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return dh
