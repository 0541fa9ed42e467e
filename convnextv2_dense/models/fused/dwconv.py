"""The block's depthwise 7x7 convolution and its LayerNorm as one Triton pass on channels-last maps (inference).

One program owns a run of ``BLOCK_W`` pixels of one image row and every channel of them: it sums the 49
shifted taps from cache in fp32, normalises each pixel over its channels and writes once, so the map is read
once and the normalised map written once where cuDNN's convolution and the LayerNorm read and write it twice.

Measured on an H100 (docs/benchmarks.md, 2026-12-07): 1.1-1.6x faster than cuDNN's convolution plus the
LayerNorm on maps up to 256 channels wide, slower from 384 channels on (``dwconv_ops.MAX_CHANNELS``). It runs only
without gradients: a Triton backward (the same kernel on the flipped taps, and the weight gradient in fp32
partials) measured 1.6-2.5x slower than cuDNN's and was removed, as was the forward without the norm, which
only training used. ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors (how the tests check it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dwconv_ops import MAX_CHANNELS

KERNEL = 7
TAPS = KERNEL * KERNEL


@triton.jit
def _dwconv_norm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, nw_ptr, nb_ptr, H, W, C, eps,
                        HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)  # image * H + output row
    h = row % H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chans = tl.arange(0, BLOCK_C)  # every channel
    cmask = chans < C
    image = (row - h).to(tl.int64) * W * C
    acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    for kh in range(7):  # a loop, not unrolled: unrolled, all 49 loads are hoisted and spill
        ih = h + kh - 3 + cols * 0  # a vector: Triton's interpreter cannot AND a scalar into a mask
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(7):
            iw = cols + kw - 3
            ok = row_ok & (iw >= 0) & (iw < W)
            offs = image + (ih * W + iw).to(tl.int64)[:, None] * C + chans[None, :]
            xv = tl.load(x_ptr + offs, mask=ok[:, None] & cmask[None, :], other=0.0)
            wv = tl.load(w_ptr + (kh * 7 + kw) * C + chans, mask=cmask, other=0.0)
            acc += xv.to(tl.float32) * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + chans, mask=cmask, other=0.0)[None, :]
    mean = tl.sum(tl.where(cmask[None, :], acc, 0.0), axis=1) / C
    diff = tl.where(cmask[None, :], acc - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
    nw = tl.load(nw_ptr + chans, mask=cmask, other=0.0)
    nb = tl.load(nb_ptr + chans, mask=cmask, other=0.0)
    y = diff * rstd[:, None] * nw[None, :] + nb[None, :]
    out = (row.to(tl.int64) * W + cols)[:, None] * C + chans[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=(cols < W)[:, None] & cmask[None, :])


def conv_config(w: int, c: int) -> tuple[int, int, int]:
    """``(BLOCK_W, BLOCK_C, num_warps)`` of the kernel for maps ``w`` wide with ``c`` channels."""
    block_c = triton.next_power_of_2(c)
    block_w = max(1, min(triton.next_power_of_2(w), 32, 4096 // block_c))
    return block_w, block_c, 4 if block_w * block_c <= 2048 else 8


def check_input(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise if ``x``/``weight`` are not an (N, C, H, W) map of at most ``MAX_CHANNELS`` channels and a
    (C, 1, 7, 7) depthwise kernel."""
    if x.dim() != 4 or weight.shape != (x.shape[1], 1, KERNEL, KERNEL):
        raise ValueError(f'expected an (N, C, H, W) map and a (C, 1, 7, 7) kernel, got {tuple(x.shape)} and '
                         f'{tuple(weight.shape)}')
    if x.shape[1] > MAX_CHANNELS:
        raise ValueError(f'the fused pass takes maps of at most {MAX_CHANNELS} channels, got {x.shape[1]}')


def depthwise7x7_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor,
                      norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``layer_norm(conv2d(x, weight, bias, padding=3, groups=C))`` over channels in one pass, without autograd
    (inference), on NCHW ``x`` in its compute dtype (cast it first under autocast); returns NHWC in ``x``'s dtype."""
    check_input(x, weight)
    n, c, h, w = x.shape
    xh = x.permute(0, 2, 3, 1).contiguous()  # a view for channels-last input
    taps = weight.detach().reshape(c, TAPS).t().float().contiguous()  # (49, C), the kernel's layout
    b = None if bias is None else bias.detach().float().contiguous()
    block_w, block_c, num_warps = conv_config(w, c)
    y = torch.empty((n, h, w, c), device=x.device, dtype=x.dtype)
    _dwconv_norm_kernel[(n * h, triton.cdiv(w, block_w))](
        xh, taps, taps if b is None else b, y, norm_weight.detach().float().contiguous(),
        norm_bias.detach().float().contiguous(), h, w, c, eps, HAS_BIAS=b is not None, BLOCK_W=block_w,
        BLOCK_C=block_c, num_warps=num_warps)
    return y
