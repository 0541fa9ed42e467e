"""The block's two Linears as Triton matmuls that carry its elementwise work, so the MLP is two passes.

``h = y @ W1.T + b1`` with GELU and GRN's sums of squares in the epilogue: ``h`` is written once and the
per-(image, channel) partial sums of ``gelu(h)**2`` come out of the same program (fp32, one row per row
block, summed by torch: no atomics). ``out = (gelu(h) * s + beta) @ W2.T + b2 (+ residual)`` with GRN
applied in the prologue: ``h`` is read once and the GRN output ``g`` is never written. Against the plain
block (Linear, GELU, GRN's norm and affine, Linear, residual add) that is about 11 C-wide reads and writes
per pixel instead of 35.

Every tile's rows lie in one image (the grid's last axis), so the GRN statistics need no image lookup; the
output-channel blocks of one row tile are the fastest axis, so they run together and share its reads in L2.
Rounding follows the plain block: ``h``, ``gelu(h)`` and ``g`` are rounded to the activation dtype before
use, products accumulate in fp32. ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (the tests).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_RSQRT2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
# Triton reads TRITON_INTERPRET when it decorates the kernels, at this module's import; so does this flag
_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


@triton.jit
def _gelu(x, dtype: tl.constexpr):
    """Exact (erf) GELU of fp32 ``x``, rounded to ``dtype`` as the plain block stores it, back in fp32 (the
    forward passes of :mod:`.triton_ops` use it too)."""
    return (0.5 * x * (1.0 + tl.math.erf(x * _RSQRT2))).to(dtype).to(tl.float32)


@triton.jit
def _dot(a, b, acc, FP32: tl.constexpr):
    """``acc + a @ b``: half-precision operands on the tensor cores, or (``FP32``) full fp32 products."""
    if FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision='ieee')
    return tl.dot(a, b, acc)


@triton.jit
def _linear_gelu_sumsq_kernel(y_ptr, wt_ptr, b_ptr, h_ptr, part_ptr, L, C, K, num_lb,
                              STORE_GELU: tl.constexpr, FP32: tl.constexpr, BLOCK_L: tl.constexpr,
                              BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(2).to(tl.int64)
    lb = tl.program_id(1)
    rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)  # fastest: a row tile's programs run together
    row_ok = rows < L
    col_ok = cols < K
    y_ptr += n * L * C  # this image; offsets within it fit 32 bits (64-bit tile offsets spill)
    h_ptr += n * L * K
    acc = tl.zeros((BLOCK_L, BLOCK_K), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        y = tl.load(y_ptr + rows[:, None] * C + cc[None, :], mask=row_ok[:, None] & (cc[None, :] < C), other=0.0)
        w = tl.load(wt_ptr + cols[None, :] * C + cc[:, None], mask=col_ok[None, :] & (cc[:, None] < C), other=0.0)
        acc = _dot(y, w, acc, FP32)
    acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    h = acc.to(h_ptr.dtype.element_ty)
    a = _gelu(h.to(tl.float32), h_ptr.dtype.element_ty)
    out = a.to(h_ptr.dtype.element_ty) if STORE_GELU else h  # without gradients nothing needs h itself
    tl.store(h_ptr + rows[:, None] * K + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])
    a = tl.where(row_ok[:, None], a, 0.0)
    tl.store(part_ptr + (n * num_lb + lb) * K + cols, tl.sum(a * a, axis=0), mask=col_ok)


@triton.jit
def _grn_linear_kernel(h_ptr, s_ptr, beta_ptr, wt_ptr, b_ptr, res_ptr, out_ptr, L, K, C,
                       GELU: tl.constexpr, HAS_RES: tl.constexpr, FP32: tl.constexpr, BLOCK_L: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    n = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)  # fastest (see above)
    row_ok = rows < L
    col_ok = cols < C
    h_ptr += n * L * K  # this image (see above)
    s_ptr += n * K
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        x = tl.load(h_ptr + rows[:, None] * K + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        s = tl.load(s_ptr + kk, mask=k_ok, other=0.0)
        beta = tl.load(beta_ptr + kk, mask=k_ok, other=0.0)
        a = _gelu(x.to(tl.float32), h_ptr.dtype.element_ty) if GELU else x.to(tl.float32)  # h, or gelu(h) stored
        g = (a * s[None, :] + beta[None, :]).to(h_ptr.dtype.element_ty)
        w = tl.load(wt_ptr + cols[None, :] * K + kk[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc = _dot(g, w, acc, FP32)
    acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    offs = rows[:, None] * C + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    out_ptr += n * L * C
    if HAS_RES:  # the branch rounded to the activation dtype, then added, as ``x + branch`` does
        res = tl.load(res_ptr + n * L * C + offs, mask=mask, other=0.0)
        acc = acc.to(h_ptr.dtype.element_ty).to(tl.float32) + res.to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _fp32_dot(dtype: torch.dtype) -> bool:
    """Whether the matmuls multiply in full fp32: for fp32 maps (as cuBLAS does without TF32), and for bf16 in
    Triton's interpreter, whose bf16 ``tl.dot`` is wrong (Triton 3.9; fp32 products of bf16 values are exact)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _INTERPRETED)


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def gemm_config(rows: int, out_width: int, reduce_width: int) -> tuple[int, int, int, int]:
    """``(BLOCK_L, BLOCK_OUT, BLOCK_REDUCE, num_warps)`` of the two matmuls for ``rows`` pixels per image,
    ``out_width`` output channels and ``reduce_width`` input channels: the fixed tile (the interpreter's, and
    the GPU's with :data:`TUNE` off). None of these spills on an H100 (``dev/kernel_registers.py``); a
    reduction block of 64 or a 128 x 128 tile on 4 warps does."""
    block_l = _pow2(rows, 16, 128)
    block_out = _pow2(out_width, 16, 128)
    block_reduce = _pow2(reduce_width, 16, 32)
    return block_l, block_out, block_reduce, 8 if block_l * block_out >= 64 * 128 else 4


# The tiles a GPU times on a shape's first call, ``(BLOCK_L, BLOCK_OUT, BLOCK_REDUCE, num_warps, num_stages)``,
# each clipped to the shape; none spills on an H100 (dev/kernel_registers.py checks them all).
TILES = ((128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 64, 8, 3), (64, 128, 64, 8, 4), (64, 256, 32, 8, 3),
         (64, 64, 64, 8, 3))
TUNE = True  # time TILES per shape on a GPU (off: gemm_config's tile everywhere)
_tuned: dict[tuple, tuple[int, int, int, int, int]] = {}


def candidate_tiles(rows: int, out_width: int, reduce_width: int) -> list[tuple[int, int, int, int, int]]:
    """:data:`TILES` clipped to a shape (no block wider than the next power of two of its extent, 16 at least),
    without repeats, :func:`gemm_config`'s tile (three stages) first."""
    tiles = [(*gemm_config(rows, out_width, reduce_width), 3)]
    for bl, bo, br, warps, stages in TILES:
        tile = (min(bl, _pow2(rows, 16, bl)), min(bo, _pow2(out_width, 16, bo)),
                min(br, _pow2(reduce_width, 16, br)), warps, stages)
        if tile not in tiles:
            tiles.append(tile)
    return tiles


def _tile(kernel: str, rows: int, out_width: int, reduce_width: int, dtype: torch.dtype, flags: tuple,
          launch) -> tuple[int, int, int, int, int]:
    """The tile of ``kernel`` for a shape: the fastest of :func:`candidate_tiles` by ``launch(tile)``, timed once
    per (shape, dtype, flags) and remembered, rows by the power of two above them (so inputs of many sizes time
    a few times, not once per size); :func:`gemm_config`'s in the interpreter or with :data:`TUNE` off."""
    key = (kernel, triton.next_power_of_2(rows), out_width, reduce_width, dtype, flags)
    if key not in _tuned:
        tiles = candidate_tiles(rows, out_width, reduce_width)
        if _INTERPRETED or not TUNE or len(tiles) == 1:
            _tuned[key] = tiles[0]
        else:
            from triton.testing import do_bench
            _tuned[key] = min(tiles, key=lambda tile: do_bench(lambda: launch(tile), warmup=5, rep=20))
    return _tuned[key]


def linear_gelu_sumsq(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      store_gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = y @ weight.T + bias`` (or ``gelu(h)``) in ``y``'s dtype and ``sum over L of gelu(h)**2`` in fp32, (N, K).

    Args:
        y (Tensor): (N, L, C) contiguous activations.
        weight (Tensor): (K, C) weight in ``y``'s dtype, contiguous.
        bias (Tensor): (K,) bias, fp32.
        store_gelu (bool): Return ``gelu(h)`` instead of ``h`` (inference). Defaults to False.
    """
    n, length, c = y.shape
    k = weight.shape[0]
    h = torch.empty((n, length, k), device=y.device, dtype=y.dtype)
    fp32 = _fp32_dot(y.dtype)

    def launch(tile):
        block_l, block_k, block_c, warps, stages = tile
        grid = (triton.cdiv(k, block_k), triton.cdiv(length, block_l), n)
        part = torch.empty((n, grid[1], k), device=y.device, dtype=torch.float32)
        _linear_gelu_sumsq_kernel[grid](y, weight, bias, h, part, length, c, k, grid[1], STORE_GELU=store_gelu,
                                        FP32=fp32, BLOCK_L=block_l, BLOCK_K=block_k, BLOCK_C=block_c,
                                        num_warps=warps, num_stages=stages)
        return part
    part = launch(_tile('linear_gelu_sumsq', length, k, c, y.dtype, (store_gelu,), launch))
    return h, part.sum(dim=1)


def grn_linear(h: torch.Tensor, s: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               residual: torch.Tensor | None = None, gelu: bool = True) -> torch.Tensor:
    """``(gelu(h) * s + beta) @ weight.T + bias``, plus ``residual`` if given (then in the promoted dtype).

    Args:
        h (Tensor): (N, L, K) contiguous activations (``gelu(h)`` itself with ``gelu=False``).
        s (Tensor): (N, K) fp32 GRN scale.
        beta (Tensor): (K,) fp32 GRN shift.
        weight (Tensor): (C, K) weight in ``h``'s dtype, contiguous.
        bias (Tensor): (C,) bias, fp32.
        residual (Tensor, optional): (N, L, C) contiguous, added to the result.
        gelu (bool): Apply GELU to ``h`` first. Defaults to True.
    """
    n, length, k = h.shape
    c = weight.shape[0]
    dtype = h.dtype if residual is None else torch.promote_types(h.dtype, residual.dtype)
    out = torch.empty((n, length, c), device=h.device, dtype=dtype)
    fp32 = _fp32_dot(h.dtype)

    def launch(tile):
        block_l, block_c, block_k, warps, stages = tile
        grid = (triton.cdiv(c, block_c), triton.cdiv(length, block_l), n)
        _grn_linear_kernel[grid](h, s, beta, weight, bias, out if residual is None else residual, out, length, k,
                                 c, GELU=gelu, HAS_RES=residual is not None, FP32=fp32, BLOCK_L=block_l,
                                 BLOCK_C=block_c, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    launch(_tile('grn_linear', length, c, k, h.dtype, (gelu, residual is not None, dtype), launch))
    return out
