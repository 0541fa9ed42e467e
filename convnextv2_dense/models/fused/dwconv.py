"""The block's depthwise 7x7 convolution as Triton kernels on channels-last maps, optionally with its LayerNorm.

cuDNN's depthwise kernel for NHWC half-precision maps reads each input many times from memory and runs far
from the memory bound. Here one program owns a run of ``BLOCK_W`` pixels of one image row and ``BLOCK_C``
channels: it sums the 49 shifted taps from cache in fp32 and writes the result once. With ``NORM`` the program
holds every channel of its pixels and applies the block's LayerNorm before writing, so inference reads the
map once and writes the normalised map once.

Backward: the input gradient is the same kernel on the flipped kernel; the weight and bias gradients come from
one pass whose programs each sum a band of rows for every tap into fp32 partials (deterministic; torch sums
the partials). ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (how the tests check them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

KERNEL = 7
TAPS = KERNEL * KERNEL
MAX_NORM_CHANNELS = 2048  # widest map whose LayerNorm is fused (one program holds all its channels)


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, nw_ptr, nb_ptr, H, W, C, eps,
                   HAS_BIAS: tl.constexpr, NORM: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)  # image * H + output row
    h = row % H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
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
    if NORM:  # BLOCK_C covers every channel
        mean = tl.sum(tl.where(cmask[None, :], acc, 0.0), axis=1) / C
        diff = tl.where(cmask[None, :], acc - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / C + eps)
        nw = tl.load(nw_ptr + chans, mask=cmask, other=0.0)
        nb = tl.load(nb_ptr + chans, mask=cmask, other=0.0)
        acc = diff * rstd[:, None] * nw[None, :] + nb[None, :]
    out = (row.to(tl.int64) * W + cols)[:, None] * C + chans[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=(cols < W)[:, None] & cmask[None, :])


@triton.jit
def _dwconv_rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, H, W, C, row_blocks,
                        HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # BLOCK_H output rows per program: each input row is loaded once per horizontal tap and feeds every output
    # row it reaches (weights of the other rows are masked to zero), 7 * (BLOCK_H + 6) loads for 49 * BLOCK_H.
    image = tl.program_id(0) // row_blocks
    h0 = (tl.program_id(0) % row_blocks) * BLOCK_H
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chans = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chans < C
    out_rows = tl.arange(0, BLOCK_H)
    base = image.to(tl.int64) * H * W * C
    acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), dtype=tl.float32)
    for i in range(BLOCK_H + 6):  # a loop (see _dwconv_kernel)
        ih = h0 + i - 3 + cols * 0
        row_ok = (ih >= 0) & (ih < H)
        kh = i - out_rows
        kh_ok = (kh >= 0) & (kh < 7)
        for kw in tl.static_range(7):
            iw = cols + kw - 3
            ok = row_ok & (iw >= 0) & (iw < W)
            offs = base + (ih * W + iw).to(tl.int64)[:, None] * C + chans[None, :]
            xv = tl.load(x_ptr + offs, mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + (kh * 7 + kw)[:, None] * C + chans[None, :], mask=kh_ok[:, None] & cmask[None, :],
                         other=0.0)
            acc += xv[None, :, :] * wv[:, None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + chans, mask=cmask, other=0.0)[None, None, :]
    oh = h0 + out_rows
    out = base + ((oh[:, None] * W + cols[None, :]).to(tl.int64))[:, :, None] * C + chans[None, None, :]
    ok = (oh < H)[:, None, None] & (cols < W)[None, :, None] & cmask[None, None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dwconv_wgrad_kernel(x_ptr, dy_ptr, dw_ptr, db_ptr, H, W, C, rows, rows_per_program,
                         BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    band = tl.program_id(0)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chans < C
    taps = tl.arange(0, 64)  # 49 used
    dh = taps // 7 - 3
    dwo = taps % 7 - 3
    acc = tl.zeros((64, BLOCK_C), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r in range(band * rows_per_program, tl.minimum(band * rows_per_program + rows_per_program, rows)):
        h = r % H
        image = (r - h).to(tl.int64) * W * C
        ih = h + dh  # (64,)
        tap_ok = (taps < 49) & (ih >= 0) & (ih < H)
        for w0 in range(0, W, BLOCK_W):
            cols = w0 + tl.arange(0, BLOCK_W)
            col_ok = cols < W
            g_offs = image + (h * W + cols).to(tl.int64)[:, None] * C + chans[None, :]
            g = tl.load(dy_ptr + g_offs, mask=col_ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            bias_acc += tl.sum(g, axis=0)
            iw = cols[None, :] + dwo[:, None]  # (64, BLOCK_W)
            ok = tap_ok[:, None] & col_ok[None, :] & (iw >= 0) & (iw < W)
            x_offs = image + (ih[:, None] * W + iw).to(tl.int64)[:, :, None] * C + chans[None, None, :]
            xv = tl.load(x_ptr + x_offs, mask=ok[:, :, None] & cmask[None, None, :], other=0.0).to(tl.float32)
            acc += tl.sum(xv * g[None, :, :], axis=1)
    part = dw_ptr + band.to(tl.int64) * 49 * C
    tl.store(part + taps[:, None] * C + chans[None, :], acc, mask=(taps < 49)[:, None] & cmask[None, :])
    tl.store(db_ptr + band.to(tl.int64) * C + chans, bias_acc, mask=cmask)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(n)


def _launch_conv(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                 norm: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
    """The kernel on (N, H, W, C) contiguous ``x`` with (49, C) fp32 ``taps``; returns (N, H, W, C)."""
    n, h, w, c = x.shape
    block_w, block_c, num_warps = conv_config(w, c, norm is not None)
    y = torch.empty((n, h, w, c), device=x.device, dtype=out_dtype)
    nw, nb, eps = norm if norm is not None else (taps, taps, 0.0)
    grid = (n * h, triton.cdiv(w, block_w), triton.cdiv(c, block_c))
    _dwconv_kernel[grid](x, taps, bias if bias is not None else taps, y, nw, nb, h, w, c, eps,
                         HAS_BIAS=bias is not None, NORM=norm is not None, BLOCK_W=block_w, BLOCK_C=block_c,
                         num_warps=num_warps)
    return y


def conv_config(w: int, c: int, norm: bool) -> tuple[int, int, int]:
    """``(BLOCK_W, BLOCK_C, num_warps)`` of :func:`_launch_conv` for maps ``w`` wide with ``c`` channels."""
    block_c = _pow2(c) if norm else min(_pow2(c), 128)
    block_w = max(1, min(_pow2(w), 32, 4096 // block_c))
    return block_w, block_c, 4 if block_w * block_c <= 2048 else 8


def _launch_rows(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                 block_h: int = 4, block_w: int = 8, block_c: int = 64, num_warps: int = 4) -> torch.Tensor:
    """:func:`_launch_conv` without the norm, by the row-block kernel."""
    n, h, w, c = x.shape
    y = torch.empty((n, h, w, c), device=x.device, dtype=out_dtype)
    row_blocks = triton.cdiv(h, block_h)
    grid = (n * row_blocks, triton.cdiv(w, block_w), triton.cdiv(c, block_c))
    _dwconv_rows_kernel[grid](x, taps, bias if bias is not None else taps, y, h, w, c, row_blocks,
                              HAS_BIAS=bias is not None, BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
                              num_warps=num_warps)
    return y


def _weight_grad(x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(49, C) and (C,) fp32 sums over every pixel of ``x`` (shifted by each tap) times ``dy``, both NHWC."""
    n, h, w, c = x.shape
    rows = n * h
    block_c = min(_pow2(c), 32)
    bands = min(rows, 512)
    rows_per_program = triton.cdiv(rows, bands)
    bands = triton.cdiv(rows, rows_per_program)
    dw = torch.empty((bands, TAPS, c), device=x.device, dtype=torch.float32)
    db = torch.empty((bands, c), device=x.device, dtype=torch.float32)
    _dwconv_wgrad_kernel[(bands, triton.cdiv(c, block_c))](x, dy, dw, db, h, w, c, rows, rows_per_program,
                                                            BLOCK_W=8, BLOCK_C=block_c, num_warps=8)
    return dw.sum(dim=0), db.sum(dim=0)


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """A (C, 1, 7, 7) depthwise kernel as (49, C) fp32, the kernels' layout."""
    c = weight.shape[0]
    return weight.detach().reshape(c, TAPS).t().float().contiguous()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) contiguous view (or copy) of an NCHW tensor."""
    return x.permute(0, 2, 3, 1).contiguous()


class _NoContext:
    """Stands for autograd's ctx where the custom ops (:mod:`.dwconv_ops`) call the Function's methods."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:class:`DepthwiseConv7x7`'s forward without autograd."""
    return DepthwiseConv7x7.forward(_NoContext(), x, weight, bias)


def conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input, weight and bias gradients of the convolution of NCHW ``x`` for the output gradient ``dy``."""
    ctx = _NoContext()
    ctx.saved_tensors, ctx.has_bias = (_nhwc(x), weight), True
    return DepthwiseConv7x7.backward(ctx, dy)


class DepthwiseConv7x7(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=3, groups=C)`` on NCHW ``x``; output NCHW, channels-last strides."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        xh = _nhwc(x)
        y = _launch_conv(xh, _taps(weight), None if bias is None else bias.detach().float().contiguous(), x.dtype)
        ctx.save_for_backward(xh, weight)
        ctx.has_bias = bias is not None
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        xh, weight = ctx.saved_tensors
        dyh = _nhwc(dy.to(xh.dtype))
        dx = _launch_conv(dyh, _taps(weight.flip(-1, -2)), None, xh.dtype).permute(0, 3, 1, 2)
        dw, db = _weight_grad(xh, dyh)
        dw = dw.t().reshape(weight.shape).to(weight.dtype)
        return dx, dw, db.to(weight.dtype) if ctx.has_bias else None


def check_input(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise if ``x``/``weight`` are not an (N, C, H, W) map and a (C, 1, 7, 7) depthwise kernel."""
    if x.dim() != 4 or weight.shape != (x.shape[1], 1, KERNEL, KERNEL):
        raise ValueError(f'expected an (N, C, H, W) map and a (C, 1, 7, 7) kernel, got {tuple(x.shape)} and '
                         f'{tuple(weight.shape)}')


def depthwise7x7(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The depthwise 7x7 convolution (padding 3) with autograd; ``x`` in its compute dtype (cast it first under
    autocast). Returns NCHW with channels-last strides."""
    check_input(x, weight)
    return DepthwiseConv7x7.apply(x, weight, bias)


def depthwise7x7_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor,
                      norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The convolution then LayerNorm over channels in one pass, without autograd (inference); returns NHWC in
    ``x``'s dtype. Maps wider than :data:`MAX_NORM_CHANNELS` run the two apart."""
    check_input(x, weight)
    c = x.shape[1]
    taps = _taps(weight)
    b = None if bias is None else bias.detach().float().contiguous()
    if c > MAX_NORM_CHANNELS:
        z = _launch_conv(_nhwc(x), taps, b, x.dtype)
        return torch.nn.functional.layer_norm(z, (c,), norm_weight, norm_bias, eps).to(x.dtype)
    norm = (norm_weight.detach().float().contiguous(), norm_bias.detach().float().contiguous(), eps)
    return _launch_conv(_nhwc(x), taps, b, x.dtype, norm)

