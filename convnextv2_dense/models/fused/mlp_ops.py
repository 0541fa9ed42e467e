"""The block's MLP in the two matmul passes of :mod:`.mlp_gemm` as torch custom ops, so ``torch.compile`` keeps
it whole (the compiler would otherwise write the 4C-wide activation several times: Linear, GELU with GRN's
statistics, GRN's affine, Linear, residual).

- ``gelu_grn_mlp``: without gradients (inference).
- ``gelu_grn_mlp_train``: with gradients. It also returns the first matmul's output ``h`` and the (N, K) sums of
  squares, which its backward (``gelu_grn_mlp_backward``, registered with ``register_autograd``) reads: the
  eager function's backward (:func:`.grn_mlp.mlp_backward`), GRN's statistics recomputed from the sums.

Registered when this module is imported (torch >= 2.4, as :mod:`.dwconv_ops`), without importing Triton: the
kernels load on the first call. Imports torch only.
"""
from __future__ import annotations

import torch

from .dwconv_ops import COMPILABLE


def _out_dtype(y: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    return y.dtype if residual is None else torch.promote_types(y.dtype, residual.dtype)


if COMPILABLE:
    @torch.library.custom_op('convnextv2_dense::gelu_grn_mlp', mutates_args=())
    def gelu_grn_mlp(y: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, gamma: torch.Tensor,
                     beta: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor, residual: torch.Tensor | None,
                     eps: float) -> torch.Tensor:
        from .grn_mlp import gelu_grn_mlp as mlp
        from .triton_ops import TritonOps
        with torch.no_grad():
            return mlp(y, weight1, bias1, gamma, beta, weight2, bias2, residual, eps, TritonOps)

    @gelu_grn_mlp.register_fake
    def _(y, weight1, bias1, gamma, beta, weight2, bias2, residual, eps):
        n, length, _ = y.shape
        return y.new_empty((n, length, weight2.shape[0]), dtype=_out_dtype(y, residual))

    @torch.library.custom_op('convnextv2_dense::gelu_grn_mlp_train', mutates_args=())
    def gelu_grn_mlp_train(y: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, gamma: torch.Tensor,
                           beta: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
                           residual: torch.Tensor | None, eps: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .grn_mlp import mlp_forward
        from .triton_ops import TritonOps
        with torch.autocast(y.device.type, enabled=False):
            out, h, sumsq, _ = mlp_forward(TritonOps, y.contiguous(), weight1.to(y.dtype).contiguous(), bias1,
                                           gamma, beta, weight2.to(y.dtype).contiguous(), bias2,
                                           None if residual is None else residual.contiguous(), eps, inference=False)
        return out, h, sumsq

    @gelu_grn_mlp_train.register_fake
    def _(y, weight1, bias1, gamma, beta, weight2, bias2, residual, eps):
        n, length, _ = y.shape
        k = weight1.shape[0]
        return (y.new_empty((n, length, weight2.shape[0]), dtype=_out_dtype(y, residual)),
                y.new_empty((n, length, k)), y.new_empty((n, k), dtype=torch.float32))

    @torch.library.custom_op('convnextv2_dense::gelu_grn_mlp_backward', mutates_args=())
    def gelu_grn_mlp_backward(dout: torch.Tensor, y: torch.Tensor, h: torch.Tensor, sumsq: torch.Tensor,
                              weight1: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight2: torch.Tensor,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor, torch.Tensor]:
        from .grn_mlp import _grn_scale, mlp_backward
        from .triton_ops import TritonOps
        with torch.autocast(y.device.type, enabled=False):
            return mlp_backward(TritonOps, dout.contiguous(), y.contiguous(), h, _grn_scale(sumsq, gamma, eps),
                                gamma, beta, weight1.to(y.dtype).contiguous(), weight2.to(y.dtype).contiguous())

    @gelu_grn_mlp_backward.register_fake
    def _(dout, y, h, sumsq, weight1, gamma, beta, weight2, eps):
        k, c = weight1.shape
        fp32 = dict(dtype=torch.float32)
        return (torch.empty_like(y), y.new_empty((k, c)), y.new_empty((k,), **fp32), y.new_empty((k,), **fp32),
                y.new_empty((k,), **fp32), y.new_empty((c, k)), y.new_empty((c,), **fp32))

    def _setup_context(ctx, inputs, output) -> None:
        y, weight1, bias1, gamma, beta, weight2, bias2, residual, eps = inputs
        _, h, sumsq = output
        ctx.save_for_backward(y, h, sumsq, weight1, gamma, beta, weight2)
        ctx.eps = eps
        ctx.has_residual = residual is not None
        ctx.param_dtypes = tuple(p.dtype for p in (weight1, bias1, gamma, beta, weight2, bias2))

    def _backward(ctx, dout, dh, dsumsq):  # h and the sums are outputs for the backward only: no gradient reaches them
        y, h, sumsq, weight1, gamma, beta, weight2 = ctx.saved_tensors
        dy, *grads = gelu_grn_mlp_backward(dout, y, h, sumsq, weight1, gamma, beta, weight2, ctx.eps)
        return (dy, *(g.to(dt) for g, dt in zip(grads, ctx.param_dtypes)), dout if ctx.has_residual else None, None)

    gelu_grn_mlp_train.register_autograd(_backward, setup_context=_setup_context)
