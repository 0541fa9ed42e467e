"""The stem, downsampling layers and stages shared by the backbone and the classifier.

Parameter names keep the official layout (``downsample_layers.{i}``, ``stages.{i}.{j}``), which is also
what the stock mmdet / mmseg ``LearningRateDecayOptimizerConstructor`` expects of a ConvNeXt.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .archs import arch_name, resolve_arch
from .block import Block
from .layers import LayerNorm2d

T = TypeVar('T', bound='ConvNeXtV2Trunk')


class ConvNeXtV2Trunk(nn.Module):
    """Stem (conv 4x4/4 + LayerNorm), three downsamplers (LayerNorm + conv 2x2/2) and four stages.

    Args:
        arch (str, optional): An arch name from :data:`~convnextv2_dense.models.archs.ARCHS`.
            Defaults to None, which needs ``depths`` and ``dims``.
        depths (tuple[int, ...], optional): Blocks per stage, instead of ``arch``. Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage, instead of ``arch``. Defaults to None.
        in_channels (int): Input image channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth of the last block; it grows linearly from 0 over the
            blocks. Defaults to 0.
        with_cp (bool): Recompute each block's activations in the backward pass to save memory.
            Defaults to False.
    """

    def __init__(self,
                 arch: str | None = None,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 drop_path_rate: float = 0.0,
                 with_cp: bool = False) -> None:
        super().__init__()
        spec = resolve_arch(arch, depths, dims)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.arch_spec = spec
        self.arch = arch_name(spec)
        self.depths, self.dims = spec.depths, spec.dims
        self.with_cp = with_cp

        stem = nn.Sequential(nn.Conv2d(in_channels, spec.dims[0], kernel_size=4, stride=4),
                             LayerNorm2d(spec.dims[0]))
        downsamplers = [
            nn.Sequential(LayerNorm2d(spec.dims[i - 1]), nn.Conv2d(spec.dims[i - 1], spec.dims[i], 2, stride=2))
            for i in range(1, 4)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downsamplers])

        last = max(spec.num_blocks - 1, 1)
        rates = [drop_path_rate * i / last for i in range(spec.num_blocks)]  # linear over depth
        starts = [sum(spec.depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(spec.dims[i], rates[starts[i] + j]) for j in range(spec.depths[i])))
            for i in range(4))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) conv and linear weights, zero biases, fresh norms, zero GRN."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for name, param in self.named_parameters():
            if '.grn.' in name:
                nn.init.zeros_(param)

    def iter_stages(self, x: torch.Tensor, last: int = 4) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``('stem', x)`` then ``('stage1', x)`` .. up to stage ``last``, un-normalised."""
        x = self.downsample_layers[0](x)
        yield 'stem', x
        for i in range(last):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self._run_stage(self.stages[i], x)
            yield f'stage{i + 1}', x

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.with_cp and self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    @classmethod
    def from_pretrained(cls: type[T], source: str | os.PathLike, **overrides: Any) -> T:
        """Build a model whose arch is inferred from a checkpoint and load it strictly.

        Args:
            source (str | PathLike): A local file or directory in any supported format (official
                release, official FCMAE, HF transformers, timm, mmpretrain, ours), an http(s) URL, or
                an HF hub repo id.
            **overrides: Constructor arguments, e.g. ``out_indices`` or ``drop_path_rate``.

        Returns:
            The loaded model; its ``load_report`` attribute says what was loaded and what was new.
        """
        from ..weights import load_pretrained  # the weights package imports this module
        return load_pretrained(cls, source, **overrides)

