"""The layers a ConvNeXt V2 block is made of: channels-first LayerNorm, GRN and drop path.

GRN (global response normalization) is the V2 addition (Woo et al., 2023, Sec. 3.2). Its statistics are
accumulated in fp32, so fp16 autocast cannot overflow the squared sums, without an fp32 copy of the
4C-wide activation; the per-(image, channel) scale is then applied in one pass in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class GRN(nn.Module):
    """Global response normalization on an NHWC tensor.

    ``Gx = ||x||_2 over H, W``; ``Nx = Gx / (mean_C(Gx) + 1e-6)``; ``out = gamma * (x * Nx) + beta + x``,
    computed as the per-(image, channel) affine ``x * (1 + gamma * Nx) + beta``. ``gamma`` and ``beta``
    start at zero, which makes a fresh GRN an identity.

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
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True, dtype=torch.float32)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        scale = torch.addcmul(torch.ones_like(nx), self.gamma.float(), nx)
        return torch.addcmul(self.beta.to(x.dtype), x, scale.to(x.dtype))


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
