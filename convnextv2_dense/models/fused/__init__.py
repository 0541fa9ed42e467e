"""A faster ConvNeXt V2 block for CUDA: same parameters, same checkpoint format, same function.

Two fast paths, both Triton. Without gradients, :func:`conv_norm` runs the depthwise 7x7 convolution and its
LayerNorm as one pass (:mod:`.dwconv`) wherever :func:`use_triton_conv` says so (on CUDA, maps up to 256
channels; under ``torch.compile`` as a custom op). The block's GELU -> GRN ->
Linear runs as one autograd function (:mod:`.grn_mlp`) whose elementwise passes are Triton kernels
(:mod:`.triton_ops`), GRN folded into the Linear's weight on large maps and applied in a pass on the others
(or, with :data:`APPLIED_IN_MATMULS`, the whole MLP as two Triton matmuls, :mod:`.mlp_gemm`);
:func:`fused_forward` is what :class:`~convnextv2_dense.models.block.Block` calls for it when :func:`use_fused`
says so: outside ``torch.compile`` / tracing / ONNX export, by default (``fused_block=None``) for the shapes
where it measured faster, in training and in inference, everywhere with ``fused_block=True``.
Imports torch only; Triton on the first call of a kernel.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...compat import is_capturing, is_compiling
from . import dwconv_ops, mlp_ops
from .grn_mlp import TorchOps, gelu_grn_linear, gelu_grn_mlp

__all__ = ['TorchOps', 'compute_dtype', 'conv_norm', 'dwconv_kernels', 'fused_forward',
           'gelu_grn_linear', 'gelu_grn_mlp', 'kernel_ops', 'mlp_form', 'switched', 'triton_available',
           'use_fused', 'use_triton_conv']


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is needed only on CUDA)."""
    return importlib.util.find_spec('triton') is not None


@functools.cache
def dwconv_kernels():
    """The depthwise-convolution kernels (:mod:`.dwconv`), imported on first use."""
    from . import dwconv
    return dwconv


@functools.cache
def kernel_ops() -> type:
    """The Triton passes (:class:`.triton_ops.TritonOps`), imported on first use."""
    from .triton_ops import TritonOps
    return TritonOps


# Folding GRN into the second Linear scales its (C, 4C) weight once per image: worth it only where a feature
# map has many more pixels than channels, with enough pixels in the batch to hide the extra small launches.
# Measured on an H200 (docs/benchmarks.md): C96 128x128 x32 images 1.6x faster; C512 32x32 x16 0.8x; C1024
# 7x7 x128 0.1x; any shape with 2 images 0.7-0.95x.
MIN_PIXELS_PER_CHANNEL = 8
MIN_BATCH_PIXELS = 65536


def large_batch(x: torch.Tensor) -> bool:
    """Whether an (N, C, H, W) block input has at least :data:`MIN_BATCH_PIXELS` pixels over its images."""
    n, _, h, w = x.shape
    return n * h * w >= MIN_BATCH_PIXELS


def worth_fusing(x: torch.Tensor) -> bool:
    """Whether the fused path is faster for an (N, C, H, W) block input, by the rule above."""
    _, c, h, w = x.shape
    return h * w >= MIN_PIXELS_PER_CHANNEL * c and large_batch(x)


# Training with at least this many images runs the fused block in every block, GRN applied where it is not
# folded. On an H100 (2026-12-07, docs/benchmarks.md) the whole backbone trained 17-19% faster so at 32 and
# 128 images (tiny 512, base 224), twice each; at 16 (base 512) three runs disagreed (+4%, -13%, -16%
# against the fold rule alone), and at 2 images a block was 0.75-0.88x (the extra launches cost more than
# the passes saved).
MIN_IMAGES_APPLIED = 32


# Under torch.compile, whether fused_block=None (the default) also takes the MLP's custom op in inference; off
# until a GPU has timed it against the compiler's own kernels (fused_block=True takes it, in training too; the
# benchmark's ``ours-fused-compile`` rows).
COMPILED_MLP_BY_DEFAULT = False


def use_fused(mode: bool | None, training: bool, x: torch.Tensor) -> bool:
    """Whether a block in ``training`` mode with ``fused_block=mode`` runs fused on input ``x``: ``True``
    always (on CUDA), ``False`` never, ``None`` where it measured faster: with gradients in training where
    :func:`worth_fusing` (GRN folded) or the batch has :data:`MIN_IMAGES_APPLIED` images, without gradients
    (inference) where the batch has at least :data:`MIN_BATCH_PIXELS` pixels (an H100, 2026-12-07: 1.7x at
    C96 128x128 x32; at 16k pixels the plain block was faster). :func:`fused_forward` picks the form
    (:func:`mlp_form`). Under ``torch.compile`` as the custom ops of :mod:`.mlp_ops` (torch >= 2.4): with
    ``mode`` True (with or without gradients), with ``mode`` None only without gradients and only if
    :data:`COMPILED_MLP_BY_DEFAULT`; never in tracing or export."""
    if mode is False or not x.is_cuda:
        return False
    if mode is None:
        if torch.is_grad_enabled():
            if not (training and (worth_fusing(x) or x.shape[0] >= MIN_IMAGES_APPLIED)):
                return False
        elif not large_batch(x):
            return False
    if is_compiling():  # with gradients only with fused_block=True, until a GPU has timed it
        wanted = mode is True or (COMPILED_MLP_BY_DEFAULT and not torch.is_grad_enabled())
        return wanted and mlp_ops.COMPILABLE and triton_available()
    return not is_capturing() and triton_available()


def use_triton_conv(mode: bool | None, x: torch.Tensor) -> bool:
    """Whether a block with ``fused_block=mode`` runs its depthwise convolution and LayerNorm as the one Triton
    pass of :mod:`.dwconv` on input ``x`` when no gradient is needed: on CUDA for maps of at most
    ``dwconv_ops.MAX_CHANNELS`` (256) channels, with ``mode`` None only where the batch has at least
    :data:`MIN_BATCH_PIXELS` pixels (at 2 images of 128 x 128 it measured slower than cuDNN's), not with
    ``mode`` False; under ``torch.compile`` as a custom op (torch >= 2.4), never in tracing or export."""
    if mode is False or not x.is_cuda or not triton_available():
        return False
    if x.shape[1] > dwconv_ops.MAX_CHANNELS or (mode is None and not large_batch(x)):
        return False
    if is_compiling():
        return dwconv_ops.COMPILABLE
    return not is_capturing()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution on ``x`` computes in: autocast's where it is on, else ``x``'s."""
    kind = x.device.type
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else x.dtype


# Whether the block's LayerNorm runs in bf16 on the convolution's bf16 output under bf16 autocast (see
# :func:`norm_in_conv_dtype`). Off until a GPU has timed it (the benchmark's ``ours-bf16-norm`` row): it
# launches as many kernels as autocast's fp32 LayerNorm and its casts, and moves fewer bytes (bf16 in and
# out, no fp32 copy of the activation).
NORM_IN_BF16 = False


def norm_in_conv_dtype(y: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Whether :func:`conv_norm` normalises the convolution's output ``y`` in ``y``'s own dtype: on CUDA, where
    ``y`` is bf16 and the LayerNorm's parameters are fp32 (bf16 autocast), outside ``torch.compile``, tracing and
    export, while :data:`NORM_IN_BF16`. Autocast would run it in fp32 between two casts of the activation (to
    fp32 before it, back to bf16 for the Linear after it), forward and backward; in bf16 the kernel still
    accumulates its statistics in fp32 and its output is rounded to bf16 once, as the Linear's input was
    before. Not for fp16: its parameter gradients would be summed into fp16, where a loss scale overflows."""
    return (NORM_IN_BF16 and y.is_cuda and y.dtype == torch.bfloat16 and norm.weight.dtype == torch.float32
            and not is_capturing())


def layer_norm_in_dtype(y: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(y)`` (a block's LayerNorm, always with weight and bias) computed in ``y``'s dtype, autocast off:
    the parameters are cast to it (their gradients come back in their own dtype through the cast)."""
    with torch.autocast(y.device.type, enabled=False):
        return F.layer_norm(y, norm.normalized_shape, norm.weight.to(y.dtype), norm.bias.to(y.dtype), norm.eps)


def conv_norm(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block.norm(block.dwconv(x))`` as an NHWC tensor (the block's first half): one Triton pass where no
    gradient is needed and :func:`use_triton_conv` says so, else cuDNN's convolution and the LayerNorm (in
    bf16 where :func:`norm_in_conv_dtype`)."""
    conv, norm = block.dwconv, block.norm
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in (
        conv.weight, conv.bias, norm.weight, norm.bias) if p is not None))
    if needs_grad or not use_triton_conv(block.fused_block, x):
        y = conv(x).permute(0, 2, 3, 1)
        return layer_norm_in_dtype(y, norm) if norm_in_conv_dtype(y, norm) else norm(y)
    # the custom op under torch.compile, which the compiler keeps whole
    op = dwconv_ops.conv_norm if is_compiling() else dwconv_kernels().depthwise7x7_norm
    return op(x.to(compute_dtype(x)), conv.weight, conv.bias, norm.weight, norm.bias, norm.eps)


# Where GRN is applied (not folded), the MLP runs either as two Triton matmuls that carry GELU, the GRN statistics,
# GRN's affine and the residual (:mod:`.mlp_gemm`), or as cuBLAS's matmuls with Triton passes between them. Which
# is faster is for dev/check_fused.py to say on a GPU; until then the second.
APPLIED_IN_MATMULS = False
SWITCHES = ('APPLIED_IN_MATMULS', 'NORM_IN_BF16')


@contextlib.contextmanager
def switched(name: str, enabled: bool = True) -> Iterator[None]:
    """This module's switch ``name`` (:data:`APPLIED_IN_MATMULS`, :data:`NORM_IN_BF16`) set to ``enabled``
    inside the ``with`` block, restored after (benchmark rows of a path that is not the default)."""
    if name not in SWITCHES:
        raise ValueError(f'switch must be one of {SWITCHES}, got {name!r}')
    previous = globals()[name]
    globals()[name] = enabled
    try:
        yield
    finally:
        globals()[name] = previous


def mlp_form(x: torch.Tensor) -> str:
    """How :func:`fused_forward` runs the MLP on block input ``x``: ``'folded'`` (GRN in pwconv2's weight) where
    :func:`worth_fusing`, else ``'matmuls'`` (the two Triton matmuls) if :data:`APPLIED_IN_MATMULS`, else
    ``'applied'`` (cuBLAS's matmuls and Triton passes)."""
    if worth_fusing(x):
        return 'folded'
    return 'matmuls' if APPLIED_IN_MATMULS else 'applied'


def fused_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block`` (dwconv, norm, pwconv1, grn, pwconv2, drop path, residual) on NCHW ``x`` (channels-last in
    practice), the MLP in the form :func:`mlp_form` picks, or under ``torch.compile`` as a custom op of the
    matmul form (with gradients, the training op with its registered backward). In the matmul form the residual
    is added in the second matmul's epilogue when drop path is idle. Returns an NCHW view of an NHWC tensor."""
    y = conv_norm(block, x)
    n, hh, ww, c = y.shape
    compiling = is_compiling()
    form = 'matmuls' if compiling else mlp_form(x)
    if form != 'matmuls':
        h = block.pwconv1(y)
        out = gelu_grn_linear(h.reshape(n, hh * ww, -1), block.grn.gamma, block.grn.beta, block.pwconv2.weight,
                              block.pwconv2.bias, block.grn.eps, kernel_ops(), fold=form == 'folded')
        return x + block.drop_path(out.view(n, hh, ww, -1).permute(0, 3, 1, 2))
    nhwc = x.permute(0, 2, 3, 1)
    add_in_matmul = not block.drop_path.active and nhwc.is_contiguous()
    args = (y.to(compute_dtype(x)).reshape(n, hh * ww, c), block.pwconv1.weight, block.pwconv1.bias, block.grn.gamma,
            block.grn.beta, block.pwconv2.weight, block.pwconv2.bias,
            nhwc.reshape(n, hh * ww, c) if add_in_matmul else None, block.grn.eps)
    if not compiling:
        out = gelu_grn_mlp(*args, kernel_ops())
    elif torch.is_grad_enabled():
        out = mlp_ops.gelu_grn_mlp_train(*args)[0]
    else:
        out = mlp_ops.gelu_grn_mlp(*args)
    out = out.view(n, hh, ww, c).permute(0, 3, 1, 2)
    return out if add_in_matmul else x + block.drop_path(out)
