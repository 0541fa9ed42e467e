"""ConvNeXt V2 image classifier: trunk, global average pool, LayerNorm, Linear head.

It exists so that a classification checkpoint loads completely and its logits can be compared with
HF's ``ConvNextV2ForImageClassification`` (parameter counts match the paper's table).
"""
from __future__ import annotations

import torch
from torch import nn

from .trunk import ConvNeXtV2Trunk


class ConvNeXtV2Classifier(ConvNeXtV2Trunk):
    """ConvNeXt V2 for image classification.

    Args:
        arch (str, optional): An arch name. Defaults to ``'tiny'`` unless ``depths`` and ``dims`` are given.
        num_classes (int): Output classes. Defaults to 1000.
        depths (tuple[int, ...], optional): Blocks per stage for a custom arch. Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage for a custom arch. Defaults to None.
        in_channels (int): Input image channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth of the last block. Defaults to 0.
        head_norm_eps (float): Epsilon of the pooled LayerNorm; the official code uses 1e-6, HF's hub
            configs 1e-12. Defaults to 1e-6.
        with_cp (bool): Activation checkpointing per block. Defaults to False.
    """

    def __init__(self,
                 arch: str | None = None,
                 num_classes: int = 1000,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 drop_path_rate: float = 0.0,
                 head_norm_eps: float = 1e-6,
                 with_cp: bool = False) -> None:
        if arch is None and depths is None and dims is None:
            arch = 'tiny'
        super().__init__(arch, depths=depths, dims=dims, in_channels=in_channels,
                         drop_path_rate=drop_path_rate, with_cp=with_cp)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(self.dims[-1], eps=head_norm_eps)
        self.head = nn.Linear(self.dims[-1], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised features of shape (N, C)."""
        *_, (_, last) = self.iter_stages(x)
        return self.norm(last.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(self.forward_features(x))
