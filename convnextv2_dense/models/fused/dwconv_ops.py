"""The fused depthwise convolution and LayerNorm of :mod:`.dwconv` as a torch custom op, so ``torch.compile``
keeps it (opaque; the compiler fuses around it) instead of tracing into a Triton launch.

Registered when this module is imported (torch >= 2.4: ``torch.library.custom_op``), without importing
Triton: the kernel loads on the first call. ``COMPILABLE`` says whether the op exists. Imports torch only.
"""
from __future__ import annotations

import torch

COMPILABLE = hasattr(torch.library, 'custom_op')
# Widest map the fused pass takes: it measured faster than cuDNN's convolution plus the LayerNorm up to 256
# channels and slower from 384 on (an H100, docs/benchmarks.md); one program holds every channel of its pixels.
MAX_CHANNELS = 256


if COMPILABLE:
    @torch.library.custom_op('convnextv2_dense::dwconv7x7_norm', mutates_args=())
    def conv_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_weight: torch.Tensor,
                  norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
        from . import dwconv
        return dwconv.depthwise7x7_norm(x, weight, bias, norm_weight, norm_bias, eps)

    @conv_norm.register_fake
    def _(x, weight, bias, norm_weight, norm_bias, eps):
        n, c, h, w = x.shape
        return x.new_empty((n, h, w, c))
