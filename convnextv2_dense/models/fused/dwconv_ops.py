"""The depthwise kernels of :mod:`.dwconv` as torch custom ops, so ``torch.compile`` keeps them (opaque; the
compiler fuses around them) instead of tracing into Triton launches.

Registered when this module is imported (torch >= 2.4: ``torch.library.custom_op``), without importing
Triton: the kernels load on the first call. ``COMPILABLE`` says whether the ops exist.
"""
from __future__ import annotations

import torch

COMPILABLE = hasattr(torch.library, 'custom_op')


def _kernels():
    from . import dwconv
    return dwconv


def _nhwc_like(x: torch.Tensor) -> torch.Tensor:
    """An empty NCHW tensor shaped like ``x`` with channels-last strides (what the kernels return)."""
    n, c, h, w = x.shape
    return x.new_empty((n, h, w, c)).permute(0, 3, 1, 2)


if COMPILABLE:
    @torch.library.custom_op('convnextv2_dense::dwconv7x7', mutates_args=())
    def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _kernels().conv_forward(x, weight, bias)

    @conv.register_fake
    def _(x, weight, bias):
        return _nhwc_like(x)

    @torch.library.custom_op('convnextv2_dense::dwconv7x7_backward', mutates_args=())
    def conv_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _kernels().conv_backward(dy, x, weight)

    @conv_backward.register_fake
    def _(dy, x, weight):
        return _nhwc_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])

    def _setup(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def _backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw, db = conv_backward(dy, x, weight)
        return dx, dw, db if ctx.has_bias else None

    conv.register_autograd(_backward, setup_context=_setup)

    @torch.library.custom_op('convnextv2_dense::dwconv7x7_norm', mutates_args=())
    def conv_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor,
                  norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
        return _kernels().depthwise7x7_norm(x, weight, bias, norm_weight, norm_bias, eps)

    @conv_norm.register_fake
    def _(x, weight, bias, norm_weight, norm_bias, eps):
        n, c, h, w = x.shape
        return x.new_empty((n, h, w, c))
