"""ConvNeXt V2 as a dense-prediction backbone (Woo et al., 2023): multi-scale NCHW features.

Plain PyTorch. The OpenMMLab adapters in :mod:`convnextv2_dense.mm` register this very class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import LayerNorm2d
from .stage_selection import STAGE_NAMES, mm_index, select_stages
from .trunk import ConvNeXtV2Trunk

STAGE_STRIDES: dict[str, int] = {'stem': 4, 'stage1': 4, 'stage2': 8, 'stage3': 16, 'stage4': 32}


class ConvNeXtV2(ConvNeXtV2Trunk):
    """ConvNeXt V2 backbone returning one normalised feature map per selected stage.

    Stages are selected by HF names (``out_features``) or by OpenMMLab indices (``out_indices``, where
    0 is stage1 and -1 is stage4, unlike HF where 0 is the stem). Each selected output goes through a
    fresh LayerNorm of its own, as in ConvNeXt's dense-prediction code and HF's ``ConvNextV2Backbone``.

    Args:
        arch (str, optional): ``'atto'``, ``'femto'``, ``'pico'``, ``'nano'``, ``'tiny'``, ``'base'``,
            ``'large'`` or ``'huge'``. Defaults to ``'tiny'`` unless ``depths`` and ``dims`` are given.
        depths (tuple[int, ...], optional): Blocks per stage for a custom arch. Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage for a custom arch. Defaults to None.
        in_channels (int): Input image channels. Defaults to 3.
        out_features (Sequence[str], optional): Stage names from ``('stem', 'stage1', 'stage2',
            'stage3', 'stage4')``, in order. Defaults to None.
        out_indices (Sequence[int], optional): OpenMMLab stage indices (0 = stage1). Defaults to None,
            which with no ``out_features`` selects all four stages.
        drop_path_rate (float): Stochastic depth of the last block, linear over depth. Defaults to 0.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k >= 1 the stem and stages 1..k, with their
            output norms; frozen parts stay in eval mode after ``train()``. Defaults to -1.
        with_cp (bool): Activation checkpointing per block. Defaults to False.
        compile (bool | dict): Run the forward pass through ``torch.compile`` (a dict is passed to it as
            keyword arguments). It fuses LayerNorm, GELU and GRN into far fewer kernels: about twice the
            backbone's training throughput on a GPU. The first step compiles (about a minute); each new
            input shape compiles again. Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads weights in
            :meth:`init_weights` through the strict loader of :mod:`convnextv2_dense.weights`.
            Defaults to None.
    """

    def __init__(self,
                 arch: str | None = None,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 out_features: Sequence[str] | None = None,
                 out_indices: Sequence[int] | None = None,
                 drop_path_rate: float = 0.0,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 compile: bool | dict = False,
                 init_cfg: dict | None = None) -> None:
        if arch is None and depths is None and dims is None:
            arch = 'tiny'
        super().__init__(arch, depths=depths, dims=dims, in_channels=in_channels,
                         drop_path_rate=drop_path_rate, with_cp=with_cp)
        selected = select_stages(out_features, out_indices)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be an integer in [-1, 4], got {frozen_stages!r}')
        if init_cfg is not None and not (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'
                                         and init_cfg.get('checkpoint')):
            raise ValueError("init_cfg must be None or dict(type='Pretrained', checkpoint=PATH_OR_URL), "
                             f'got {init_cfg!r}')
        self.stage_names = STAGE_NAMES
        self.out_features = selected
        self.out_indices = tuple(mm_index(name) for name in selected)
        channels = dict(zip(STAGE_NAMES, (self.dims[0], *self.dims)))
        self.out_channels = tuple(channels[name] for name in selected)
        self.strides = tuple(STAGE_STRIDES[name] for name in selected)
        self.frozen_stages = frozen_stages
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f'compile must be a bool or a dict of torch.compile arguments, got {compile!r}')
        self.compile_cfg = (dict(compile) if isinstance(compile, dict) else {}) if compile else None
        self.init_cfg = init_cfg
        self.out_norms = nn.ModuleDict({name: LayerNorm2d(channels[name]) for name in selected})
        self._last_stage = max(STAGE_NAMES.index(name) for name in selected)
        self._freeze()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return a tuple of NCHW feature maps, one per selected stage, in stage order."""
        if x.dim() == 4 and min(x.shape[-2:]) < max(self.strides):
            raise ValueError(f'input of size {x.shape[-2]}x{x.shape[-1]} is smaller than the total stride of the '
                             f'selected stages: give at least {max(self.strides)}x{max(self.strides)} pixels')
        if self.compile_cfg is not None and not torch.compiler.is_compiling():
            return self._compiled_features()(x)
        return self._features(x)

    def _compiled_features(self):
        # Cached per module object, so a deep copy (EMA, model wrappers) compiles its own forward.
        owner, fn = self.__dict__.get('_compiled', (None, None))
        if owner != id(self):
            fn = torch.compile(self._features, **self.compile_cfg)
            self.__dict__['_compiled'] = (id(self), fn)
        return fn

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Inside the trunk every LayerNorm leaves its output channels-last (fast for the convs that follow).
        # The outputs go back to the input's layout: raw-pointer CUDA/C++ ops downstream, such as mmcv's
        # RoIAlign, index their input as contiguous NCHW and silently read channels-last tensors wrong.
        layout = memory_layout(x)
        outs = []
        for name, feature in self.iter_stages(x, last=self._last_stage):
            if name in self.out_norms:
                outs.append(self.out_norms[name](feature).contiguous(memory_format=layout))
        return tuple(outs)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint strictly, if there is one (called by OpenMMLab runners)."""
        if self.init_cfg is None:
            return
        from ..weights import load_weights  # the weights package imports this module
        self.load_report = load_weights(self, self.init_cfg['checkpoint'])
        self._freeze()

    def frozen_modules(self) -> list[nn.Module]:
        """The stem, stages 1..k, their downsamplers and their output norms, for ``frozen_stages=k``."""
        if self.frozen_stages < 0:
            return []
        names = STAGE_NAMES[:self.frozen_stages + 1]
        modules: list[nn.Module] = [self.downsample_layers[0]]
        for k in range(1, self.frozen_stages + 1):
            if k > 1:
                modules.append(self.downsample_layers[k - 1])
            modules.append(self.stages[k - 1])
        modules += [self.out_norms[name] for name in names if name in self.out_norms]
        return modules

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ConvNeXtV2':
        super().train(mode)
        self._freeze()
        return self

    def extra_repr(self) -> str:
        return f'arch={self.arch or "custom"}, out_features={self.out_features}, frozen_stages={self.frozen_stages}'


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` if ``x`` was laid out so on purpose, else ``torch.contiguous_format`` (a plain
    NCHW tensor with one pixel or one image can pass both contiguity tests)."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
