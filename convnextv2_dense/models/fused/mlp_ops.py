"""The block's MLP in the two matmul passes of :mod:`.mlp_gemm`, without gradients, as a torch custom op, so
``torch.compile`` keeps it whole in an inference graph (the compiler would otherwise write the 4C-wide
activation several times: Linear, GELU with GRN's statistics, GRN's affine, Linear, residual).

Registered when this module is imported (torch >= 2.4, as :mod:`.dwconv_ops`), without importing Triton: the
kernels load on the first call. Imports torch only.
"""
from __future__ import annotations

import torch

from .dwconv_ops import COMPILABLE

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
        dtype = y.dtype if residual is None else torch.promote_types(y.dtype, residual.dtype)
        return y.new_empty((n, length, weight2.shape[0]), dtype=dtype)
