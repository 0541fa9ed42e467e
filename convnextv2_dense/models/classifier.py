"""ConvNeXt V2 image classifier: trunk, global average pool, LayerNorm, Linear head.

It exists so that a classification checkpoint loads completely and its logits can be compared with
HF's ``ConvNextV2ForImageClassification`` (parameter counts match the paper's table).
"""
from __future__ import annotations

import torch
from typing import Any

from torch import nn

from .hf_config import HFConfig, hf_arch_kwargs, hf_head_norm_eps, hf_num_labels
from .trunk import ConvNeXtV2Trunk


class ConvNeXtV2Classifier(ConvNeXtV2Trunk):
    """ConvNeXt V2 for image classification.

    Args:
        arch (str, optional): An arch name. Defaults to ``'tiny'`` unless ``depths`` and ``dims`` are given.
        num_classes (int): Output classes. Defaults to 1000.
        depths (tuple[int, ...], optional): Blocks per stage for a custom arch, any number of stages.
            Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage for a custom arch. Defaults to None.
        in_channels (int): Input image channels (HF's ``num_channels``). Defaults to 3.
        patch_size (int): Stem conv kernel and stride (HF's ``patch_size``). Defaults to 4.
        act (str): Block activation by HF ``hidden_act`` name. Defaults to ``'gelu'``.
        drop_path_rate (float): Stochastic depth of the last block. Defaults to 0.
        head_norm_eps (float): Epsilon of the pooled LayerNorm (HF's ``layer_norm_eps``, the only norm
            it sets); the official code uses 1e-6, HF's hub configs 1e-12. Defaults to 1e-6.
        init_std (float): Std of the truncated-normal conv / linear init (HF's ``initializer_range``).
            Defaults to 0.02.
        with_cp (bool): Activation checkpointing per block. Defaults to False.
    """

    LOAD_MAY_BE_MISSING = frozenset()
    LOAD_MAY_BE_UNUSED = frozenset({'out_norm'})  # a dense checkpoint's output norms

    def __init__(self,
                 arch: str | None = None,
                 num_classes: int = 1000,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 patch_size: int = 4,
                 act: str = 'gelu',
                 drop_path_rate: float = 0.0,
                 head_norm_eps: float = 1e-6,
                 init_std: float = 0.02,
                 with_cp: bool = False) -> None:
        if arch is None and depths is None and dims is None:
            arch = 'tiny'
        super().__init__(arch, depths=depths, dims=dims, in_channels=in_channels, patch_size=patch_size,
                         act=act, drop_path_rate=drop_path_rate, init_std=init_std, with_cp=with_cp)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
        if not (isinstance(head_norm_eps, (int, float)) and head_norm_eps > 0):
            raise ValueError(f'head_norm_eps must be a positive number, got {head_norm_eps!r}')
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(self.dims[-1], eps=head_norm_eps)
        self.head = nn.Linear(self.dims[-1], num_classes)
        nn.init.trunc_normal_(self.head.weight, std=self.init_std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_hf_config(cls, config: HFConfig, **overrides: Any) -> 'ConvNeXtV2Classifier':
        """The classifier an HF ``ConvNextV2Config`` describes (random weights), like HF's
        ``ConvNextV2ForImageClassification``: ``num_labels`` classes, ``layer_norm_eps`` in the pooled norm.

        Args:
            config (ConvNextV2Config | dict | str | PathLike): The config object, its dict, or the path
                of a ``config.json`` or its folder.
            **overrides: Constructor arguments that replace the config's.

        Returns:
            ConvNeXtV2Classifier: The equivalent classifier.

        Raises:
            ValueError: A config field we cannot honour, named with its value.
        """
        kwargs = dict(hf_arch_kwargs(config), num_classes=hf_num_labels(config),
                      head_norm_eps=hf_head_norm_eps(config))
        return cls(**{**kwargs, **overrides})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised features of shape (N, C)."""
        *_, (_, last) = self.iter_stages(x)
        return self.norm(last.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(self.forward_features(x))
