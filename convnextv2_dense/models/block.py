"""The ConvNeXt V2 block (Woo et al., 2023, Fig. 5).

dwconv 7x7 -> LayerNorm -> Linear C->4C -> GELU (or another activation) -> GRN -> Linear 4C->C -> residual
with drop path.
Parameter names follow the official release (``dwconv``, ``norm``, ``pwconv1``, ``grn``, ``pwconv2``).
"""
from __future__ import annotations

import torch
from torch import nn

from .activations import build_activation
from .fused import conv_norm, fused_forward, use_fused
from .layers import GRN, DropPath


class Block(nn.Module):
    """One ConvNeXt V2 block on NCHW tensors.

    Args:
        dim (int): Channels in and out.
        drop_path (float): Stochastic-depth probability of the residual branch. Defaults to 0.
        act (str): The activation, by HF ``hidden_act`` name (see
            :data:`~.activations.ACTIVATIONS`). Defaults to ``'gelu'``.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, act: str = 'gelu') -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        # Blocks run channels-last (every LayerNorm before them leaves that layout), so the kernel's gradient
        # comes back with channels-last strides. For a (C, 1, 7, 7) kernel that is the same memory as
        # contiguous (only the size-1 dim's stride differs; the state dict stays contiguous), but DDP compares
        # strides: matching them avoids a gradient copy and a "grad strides do not match" warning.
        self.dwconv.to(memory_format=torch.channels_last)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = build_activation(act)
        self.act_name = act
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)
        self.fused_block: bool | None = None  # see convnextv2_dense.models.fused (set by the backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused kernels compute the exact (erf) GELU; any other activation takes the plain path.
        if self.act_name == 'gelu' and use_fused(self.fused_block, self.training, x):
            return fused_forward(self, x)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(conv_norm(self, x)))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))
