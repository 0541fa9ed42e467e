"""A faster ConvNeXt V2 block for CUDA training: same parameters, same checkpoint format, same function.

The block's GELU -> GRN -> Linear runs as one autograd function (:mod:`.grn_mlp`) whose two elementwise
passes are Triton kernels (:mod:`.triton_ops`); dwconv, LayerNorm and the first Linear stay cuDNN/cuBLAS.
:func:`fused_forward` is what :class:`~convnextv2_dense.models.block.Block` calls when :func:`use_fused`
says so: on CUDA with Triton installed, outside ``torch.compile`` / tracing / ONNX export, in training by
default (``fused_block=None``), also in inference with ``fused_block=True``, never with ``False``.
Imports torch only; Triton on the first fused call.
"""
from __future__ import annotations

import functools
import importlib.util

import torch
from torch import nn

from .grn_mlp import TorchOps, gelu_grn_linear

__all__ = ['TorchOps', 'fused_forward', 'gelu_grn_linear', 'kernel_ops', 'triton_available', 'use_fused']


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is needed only on CUDA)."""
    return importlib.util.find_spec('triton') is not None


@functools.cache
def kernel_ops() -> type:
    """The Triton passes (:class:`.triton_ops.TritonOps`), imported on first use."""
    from .triton_ops import TritonOps
    return TritonOps


def use_fused(mode: bool | None, training: bool, x: torch.Tensor) -> bool:
    """Whether a block in ``training`` mode with ``fused_block=mode`` runs fused on input ``x``."""
    if mode is False or not x.is_cuda or (mode is None and not (training and torch.is_grad_enabled())):
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch.onnx.is_in_onnx_export():
        return False
    return triton_available()


def fused_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual branch of ``block`` (dwconv, norm, pwconv1, grn, pwconv2; drop path applied by the caller)
    on NCHW ``x`` (channels-last in practice); returns it as an NCHW view of an NHWC tensor."""
    y = block.norm(block.dwconv(x).permute(0, 2, 3, 1))
    h = block.pwconv1(y)
    n, hh, ww, k = h.shape
    out = gelu_grn_linear(h.reshape(n, hh * ww, k), block.grn.gamma, block.grn.beta, block.pwconv2.weight,
                          block.pwconv2.bias, block.grn.eps, kernel_ops())
    return out.view(n, hh, ww, -1).permute(0, 3, 1, 2)
