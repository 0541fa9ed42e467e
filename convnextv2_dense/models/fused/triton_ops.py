"""Triton kernels for the elementwise passes of :mod:`.grn_mlp` (same interface as ``TorchOps``).

Each program owns one (image, block of rows, block of channels) tile of a contiguous (N, L, K) tensor.
Forward: GELU and the tile's partial sums of squares (one read of ``h``, and one write of ``a`` where it is
kept; the partials, (N, row blocks, K) fp32, are summed by torch: deterministic, no atomics), and for the
applied form ``g = a * s + beta``. Backward: ``dh = (da + a * r) * gelu'(h)``, ``da`` given or ``dg * s``, and
for the applied form the partial sums of ``dg * a`` and ``dg``. ``a`` is recomputed from ``h`` and rounded
to its dtype, as the forward stored it. Arithmetic in fp32. ``TRITON_INTERPRET=1`` runs them on CPU tensors
(that is how the tests check them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import mlp_gemm
from .mlp_gemm import _RSQRT2, _gelu

BLOCK_L = 64
BLOCK_K = 64
_RSQRT2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)


@triton.jit
def _tile(L, K, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's image, row block, channel indices, tile mask and element offsets."""
    n = tl.program_id(0)
    lb = tl.program_id(1)
    rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < L) & (cols[None, :] < K)
    offs = n.to(tl.int64) * L * K + rows[:, None].to(tl.int64) * K + cols[None, :]
    return n, lb, cols, mask, offs


@triton.jit
def _gelu_sumsq_kernel(h_ptr, a_ptr, part_ptr, L, K, num_lb,
                       STORE_A: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n, lb, cols, mask, offs = _tile(L, K, BLOCK_L, BLOCK_K)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = _gelu(x, h_ptr.dtype.element_ty)
    if STORE_A:
        tl.store(a_ptr + offs, a.to(h_ptr.dtype.element_ty), mask=mask)
    part = tl.sum(a * a, axis=0)
    tl.store(part_ptr + (n.to(tl.int64) * num_lb + lb) * K + cols, part, mask=cols < K)


@triton.jit
def _gelu_grn_kernel(h_ptr, s_ptr, beta_ptr, g_ptr, L, K, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n, lb, cols, mask, offs = _tile(L, K, BLOCK_L, BLOCK_K)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = _gelu(x, h_ptr.dtype.element_ty)
    s = tl.load(s_ptr + n * K + cols, mask=cols < K, other=0.0)
    beta = tl.load(beta_ptr + cols, mask=cols < K, other=0.0)
    tl.store(g_ptr + offs, (a * s[None, :] + beta[None, :]).to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grn_grad_sums_kernel(h_ptr, dg_ptr, ds_ptr, db_ptr, L, K, num_lb,
                          BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n, lb, cols, mask, offs = _tile(L, K, BLOCK_L, BLOCK_K)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dg = tl.load(dg_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = _gelu(x, h_ptr.dtype.element_ty)
    part = (n.to(tl.int64) * num_lb + lb) * K + cols
    tl.store(ds_ptr + part, tl.sum(dg * a, axis=0), mask=cols < K)
    tl.store(db_ptr + part, tl.sum(dg, axis=0), mask=cols < K)


@triton.jit
def _gelu_grad_kernel(h_ptr, da_ptr, s_ptr, r_ptr, dh_ptr, L, K,
                      HAS_SCALE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    n, lb, cols, mask, offs = _tile(L, K, BLOCK_L, BLOCK_K)
    x = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    da = tl.load(da_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:  # da_ptr holds dg, the GRN output's gradient: da = dg * s
        da = da * tl.load(s_ptr + n * K + cols, mask=cols < K, other=0.0)[None, :]
    r = tl.load(r_ptr + n * K + cols, mask=cols < K, other=0.0)
    cdf = 0.5 * (1.0 + tl.math.erf(x * _RSQRT2))
    a = (x * cdf).to(h_ptr.dtype.element_ty).to(tl.float32)  # as the forward stored it
    dgelu = cdf + x * tl.exp(-0.5 * x * x) * _RSQRT2PI
    dh = (da + a * r[None, :]) * dgelu
    tl.store(dh_ptr + offs, dh.to(dh_ptr.dtype.element_ty), mask=mask)


def _grid(h: torch.Tensor) -> tuple[int, int, int]:
    n, length, k = h.shape
    return n, triton.cdiv(length, BLOCK_L), triton.cdiv(k, BLOCK_K)


def _partials(h: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(N, row blocks, K) fp32 for the per-tile partial sums (summed over the row blocks by torch)."""
    return torch.empty((h.shape[0], grid[1], h.shape[2]), device=h.device, dtype=torch.float32)


class TritonOps:
    """The passes as Triton kernels; inputs (N, L, K) contiguous, ``s`` and ``r`` (N, K) fp32."""

    @staticmethod
    def gelu_sumsq(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, k = h.shape
        grid = _grid(h)
        a, part = torch.empty_like(h), _partials(h, grid)
        _gelu_sumsq_kernel[grid](h, a, part, length, k, grid[1], STORE_A=True, BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return a, part.sum(dim=1)

    @staticmethod
    def sumsq_of_gelu(h: torch.Tensor) -> torch.Tensor:
        n, length, k = h.shape
        grid = _grid(h)
        part = _partials(h, grid)
        _gelu_sumsq_kernel[grid](h, h, part, length, k, grid[1], STORE_A=False, BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return part.sum(dim=1)

    @staticmethod
    def gelu_grn(h: torch.Tensor, s: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        n, length, k = h.shape
        g = torch.empty_like(h)
        _gelu_grn_kernel[_grid(h)](h, s.contiguous(), beta.detach().float().contiguous(), g, length, k,
                                   BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return g

    @staticmethod
    def grn_grad_sums(h: torch.Tensor, dg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, k = h.shape
        grid = _grid(h)
        ds, db = _partials(h, grid), _partials(h, grid)
        _grn_grad_sums_kernel[grid](h, dg.contiguous(), ds, db, length, k, grid[1], BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return ds.sum(dim=1), db.sum(dim=1)

    @staticmethod
    def gelu_grad(h: torch.Tensor, a: torch.Tensor, da: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        n, length, k = h.shape
        dh = torch.empty_like(h)
        _gelu_grad_kernel[_grid(h)](h, da.contiguous(), r, r.contiguous(), dh, length, k,
                                    HAS_SCALE=False, BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return dh

    @staticmethod
    def gelu_grn_grad(h: torch.Tensor, dg: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        n, length, k = h.shape
        dh = torch.empty_like(h)
        _gelu_grad_kernel[_grid(h)](h, dg.contiguous(), s.contiguous(), r.contiguous(), dh, length, k,
                                    HAS_SCALE=True, BLOCK_L=BLOCK_L, BLOCK_K=BLOCK_K)
        return dh

    linear_gelu_sumsq = staticmethod(mlp_gemm.linear_gelu_sumsq)
    grn_linear = staticmethod(mlp_gemm.grn_linear)
