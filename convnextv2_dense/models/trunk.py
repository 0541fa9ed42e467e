"""The stem, downsampling layers and stages shared by the backbone and the classifier.

Parameter names keep the official layout (``downsample_layers.{i}``, ``stages.{i}.{j}``), which is also
what the stock mmdet / mmseg ``LearningRateDecayOptimizerConstructor`` expects of a ConvNeXt.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import check_activation
from .archs import arch_name, resolve_arch
from .block import Block
from .layers import GRN, LayerNorm2d
from .load_policy import LoadPolicy
from .naming import ParamPosition, parse_param_name
from .stage_selection import stage_names

T = TypeVar('T', bound='ConvNeXtV2Trunk')


class ConvNeXtV2Trunk(nn.Module):
    """Stem (conv ``patch_size`` x ``patch_size`` with that stride, then LayerNorm), one downsampler
    (LayerNorm + conv 2x2/2) before every stage but the first, and the stages.

    Args:
        arch (str, optional): An arch name from :data:`~convnextv2_dense.models.archs.ARCHS`.
            Defaults to None, which needs ``depths`` and ``dims``.
        depths (tuple[int, ...], optional): Blocks per stage, instead of ``arch``; any number of
            stages. Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage, as many as ``depths``. Defaults to None.
        in_channels (int): Input image channels (HF's ``num_channels``). Defaults to 3.
        patch_size (int): Kernel and stride of the stem conv (HF's ``patch_size``). Defaults to 4.
        act (str): Block activation by HF ``hidden_act`` name: ``'gelu'``, ``'gelu_new'``, ``'relu'``,
            ``'selu'``... (see :data:`~.activations.ACTIVATIONS`). Defaults to ``'gelu'``.
        drop_path_rate (float): Stochastic depth of the last block; it grows linearly from 0 over the
            blocks. Defaults to 0.
        init_std (float): Standard deviation of the truncated-normal conv and linear weights (HF's
            ``initializer_range``). Defaults to 0.02.
        with_cp (bool): Recompute each block's activations in the backward pass to save memory.
            Defaults to False.
        num_built_stages (int, optional): Build only the first this many stages (and their
            downsamplers); a backbone passes the last stage it returns, so nothing is built that never
            runs. Defaults to None (all).
    """

    #: Position kinds (:data:`~.naming.KINDS`) of model tensors a checkpoint may lack (left fresh).
    LOAD_MAY_BE_MISSING: ClassVar[frozenset[str]] = frozenset()
    #: Position kinds of checkpoint tensors this model may leave unused (besides unbuilt stages).
    LOAD_MAY_BE_UNUSED: ClassVar[frozenset[str]] = frozenset({'out_norm'})

    def __init__(self,
                 arch: str | None = None,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 patch_size: int = 4,
                 act: str = 'gelu',
                 drop_path_rate: float = 0.0,
                 init_std: float = 0.02,
                 with_cp: bool = False,
                 num_built_stages: int | None = None) -> None:
        super().__init__()
        spec = resolve_arch(arch, depths, dims)
        for name, value in (('in_channels', in_channels), ('patch_size', patch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        check_activation(act)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        if not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ValueError(f'init_std must be a positive number, got {init_std!r}')
        built = spec.num_stages if num_built_stages is None else num_built_stages
        if isinstance(built, bool) or not isinstance(built, int) or not 0 <= built <= spec.num_stages:
            raise ValueError(f'num_built_stages must be an integer in [0, {spec.num_stages}], got {built!r}')
        self.arch_spec = spec
        self.arch = arch_name(spec)
        self.depths, self.dims = spec.depths, spec.dims
        self.num_stages = spec.num_stages
        self.stage_names = stage_names(spec.num_stages)
        self.in_channels, self.patch_size, self.act = in_channels, patch_size, act
        self.init_std = float(init_std)
        self.with_cp = with_cp

        stem = nn.Sequential(nn.Conv2d(in_channels, spec.dims[0], kernel_size=patch_size, stride=patch_size),
                             LayerNorm2d(spec.dims[0]))
        downsamplers = [
            nn.Sequential(LayerNorm2d(spec.dims[i - 1]), nn.Conv2d(spec.dims[i - 1], spec.dims[i], 2, stride=2))
            for i in range(1, built)
        ]
        self.downsample_layers = nn.ModuleList([stem, *downsamplers])

        last = max(spec.num_blocks - 1, 1)
        rates = [drop_path_rate * i / last for i in range(spec.num_blocks)]  # linear over all the depth
        starts = [sum(spec.depths[:i]) for i in range(spec.num_stages)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(spec.dims[i], rates[starts[i] + j], act) for j in range(spec.depths[i])))
            for i in range(built))
        self.reset_parameters()

    @property
    def num_built_stages(self) -> int:
        """How many stages this model builds (all of them, unless a backbone returns only early ones)."""
        return len(self.stages)

    def stage_strides(self) -> dict[str, int]:
        """The stride of every stage name: ``patch_size`` for the stem and stage1, doubling after."""
        return {name: self.patch_size * 2 ** max(i - 1, 0) for i, name in enumerate(self.stage_names)}

    def stage_channels(self) -> dict[str, int]:
        """The channels of every stage name (the stem has stage1's)."""
        return dict(zip(self.stage_names, (self.dims[0], *self.dims)))

    @staticmethod
    def param_position(name: str) -> ParamPosition | None:
        """Where the parameter ``name`` (one of this model's ``state_dict()`` keys) sits: see
        :func:`~.naming.parse_param_name`. Layer-decay optimizers and the weight loader ask this."""
        return parse_param_name(name)

    def load_policy(self) -> LoadPolicy:
        """What a checkpoint may lack and what of it may stay unused, from the class declarations
        ``LOAD_MAY_BE_MISSING`` / ``LOAD_MAY_BE_UNUSED`` and the stages this instance builds."""
        return LoadPolicy(frozenset(self.LOAD_MAY_BE_MISSING), frozenset(self.LOAD_MAY_BE_UNUSED),
                          self.num_built_stages)

    def reset_parameters(self) -> None:
        """Truncated-normal (std ``init_std``) conv and linear weights, zero biases, fresh norms, zero GRN."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=self.init_std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, GRN):
                nn.init.zeros_(module.gamma)
                nn.init.zeros_(module.beta)

    def iter_stages(self, x: torch.Tensor, last: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``('stem', x)`` then ``('stage1', x)`` .. up to stage ``last`` (default: the last built
        one), un-normalised."""
        x = self.downsample_layers[0](x)
        yield 'stem', x
        for i in range(self.num_built_stages if last is None else last):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self._run_stage(self.stages[i], x)
            yield self.stage_names[i + 1], x

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

