"""The layers a ConvNeXt V2 block is made of: channels-first LayerNorm, GRN and drop path.

GRN (global response normalization) is the V2 addition (Woo et al., 2023, Sec. 3.2). Its statistics are
accumulated in fp32, so fp16 autocast cannot overflow the squared sums, without an fp32 copy of the
4C-wide activation; the per-(image, channel) scale is then applied in one pass in the input's dtype. Its
backward is written out (:class:`GRNFunction`): autograd's, through the norm, upcasts the activation to fp32
and writes it several times; this one reads and writes it in the input's dtype, about half the traffic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import is_capturing


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (eps 1e-6, as in every ConvNeXt).

    The tensor is viewed as NHWC for the normalisation, so channels-last inputs need no copy and stay
    channels-last.

    Args:
        num_channels (int): Number of channels.
        eps (float): Added to the variance. Defaults to 1e-6.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def grn_scale(gx: torch.Tensor, gamma: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRN's per-(image, channel) statistics from the fp32 L2 norms ``gx`` over each map (channels last, any
    leading shape): the denominator ``mean_C(gx) + eps``, ``nx = gx / denom`` and the scale ``s = 1 + gamma * nx``."""
    denom = gx.mean(dim=-1, keepdim=True) + eps
    nx = gx / denom
    return denom, nx, torch.addcmul(torch.ones_like(nx), gamma.float(), nx)


def grn_scale_backward(ds: torch.Tensor, gx: torch.Tensor, denom: torch.Tensor, nx: torch.Tensor,
                       gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``ds`` (N, K), the gradient of the scale of :func:`grn_scale` (``gx``, ``nx`` (N, K), ``denom``
    (N, 1)): gamma's gradient and ``r`` (N, K) with ``da += a * r`` (the path through ``gx = ||a||``)."""
    dgamma = (ds * nx).sum(dim=0)
    dnx = ds * gamma.float()
    dgx = dnx / denom - (dnx * gx).sum(dim=1, keepdim=True) / (denom * denom * gx.shape[1])
    r = torch.where(gx > 0, dgx / gx, torch.zeros_like(gx))
    return dgamma, r


def grn_statistics(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """``gx`` (the fp32 L2 norm of each (image, channel) map of (N, H, W, C) ``x``) and :func:`grn_scale`'s
    ``denom``, ``nx`` and ``s``, all (N, 1, 1, C)-broadcastable."""
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True, dtype=torch.float32)
    return (gx, *grn_scale(gx, gamma, eps))


def grn(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """GRN on an (N, H, W, C) tensor in plain ops (what the compiler, tracing and export see; autograd
    differentiates them)."""
    return torch.addcmul(beta.to(x.dtype), x, grn_statistics(x, gamma, eps)[3].to(x.dtype))


class GRNFunction(torch.autograd.Function):
    """GRN on an (N, H, W, C) tensor with its backward written out: one pass sums ``dout * x`` and ``dout``
    per (image, channel), one forms ``dx = dout * s + x * r``, both in ``x``'s dtype (statistics in fp32).
    The backward is itself differentiable (``create_graph=True``: it then recomputes the statistics from
    ``x``, so a second-order gradient reaches ``x`` through them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        gx, denom, nx, s = grn_statistics(x, gamma, eps)
        ctx.save_for_backward(x, gx, denom, nx, s, gamma)
        ctx.eps = eps
        ctx.param_dtypes = (gamma.dtype, beta.dtype)
        return torch.addcmul(beta.to(x.dtype), x, s.to(x.dtype))

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        x, gx, denom, nx, s, gamma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: statistics the graph can differentiate
            gx, denom, nx, s = grn_statistics(x, gamma, ctx.eps)
        n, k = x.shape[0], x.shape[-1]
        dout = dout.to(x.dtype)
        ds = (dout * x).sum(dim=(1, 2), dtype=torch.float32)
        dbeta = dout.sum(dim=(0, 1, 2), dtype=torch.float32)
        dgamma, r = grn_scale_backward(ds, gx.view(n, k), denom.view(n, 1), nx.view(n, k), gamma)
        dx = torch.addcmul(dout * s.to(x.dtype), x, r.view(n, 1, 1, k).to(x.dtype))
        return dx, dgamma.to(ctx.param_dtypes[0]), dbeta.to(ctx.param_dtypes[1]), None


# GRN runs as GRNFunction on batches of at least this many pixels. On an H200 (2026-12-07, dev/check_grn.py,
# bf16) its forward + backward took 0.52-0.57x autograd's time from 65,536 pixels on (16 x 64 x 64 to
# 32 x 128 x 128); on smaller batches, where both are bound by launching ~30 kernels, 0.80-1.09x.
MIN_PIXELS_WRITTEN_OUT = 65536


class GRN(nn.Module):
    """Global response normalization on an NHWC tensor.

    ``Gx = ||x||_2 over H, W``; ``Nx = Gx / (mean_C(Gx) + 1e-6)``; ``out = gamma * (x * Nx) + beta + x``,
    computed as the per-(image, channel) affine ``x * (1 + gamma * Nx) + beta``. ``gamma`` and ``beta``
    start at zero, which makes a fresh GRN an identity. With gradients on batches of at least
    :data:`MIN_PIXELS_WRITTEN_OUT` pixels (outside tracing, export and ``torch.compile``, which see the plain
    ops) it runs as :class:`GRNFunction`.

    Args:
        dim (int): Number of channels.
        eps (float): Added to the mean response. Defaults to 1e-6.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (x.requires_grad or self.gamma.requires_grad or self.beta.requires_grad)
                and x.dim() == 4 and not is_capturing()  # before the sizes, which are tensors in a trace
                and x.shape[0] * x.shape[1] * x.shape[2] >= MIN_PIXELS_WRITTEN_OUT):
            return GRNFunction.apply(x, self.gamma, self.beta, self.eps)
        return grn(x, self.gamma, self.beta, self.eps)


class DropPath(nn.Module):
    """Drop whole residual branches per sample (stochastic depth), rescaling the kept ones.

    Args:
        drop_prob (float): Probability of dropping a sample's branch. Defaults to 0.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob

    @property
    def active(self) -> bool:
        """Whether :meth:`forward` drops anything (in training, with a non-zero probability)."""
        return self.drop_prob > 0.0 and self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
