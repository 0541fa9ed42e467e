"""ConvNeXt V2 as a dense-prediction backbone (Woo et al., 2023): multi-scale NCHW features.

Plain PyTorch. The OpenMMLab adapters in :mod:`convnextv2_dense.mm` register this very class.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..compat import is_capturing
from .archs import resolve_arch
from .hf_config import HFConfig, hf_arch_kwargs, hf_out_features_of
from .block import Block
from .layers import LayerNorm2d
from .stage_selection import mm_index, select_stages, stage_names
from .trunk import ConvNeXtV2Trunk


class ConvNeXtV2(ConvNeXtV2Trunk):
    """ConvNeXt V2 backbone returning one normalised feature map per selected stage.

    Stages are selected by HF names (``out_features``) or by OpenMMLab indices (``out_indices``, where
    0 is stage1 and -1 the last stage, unlike HF where 0 is the stem). Each selected output goes through a
    fresh LayerNorm of its own, as in ConvNeXt's dense-prediction code and HF's ``ConvNextV2Backbone``.
    Stages after the last selected one are not built (under DistributedDataParallel no parameter is
    left without a gradient); a checkpoint's tensors for them are reported as ignored when loading.

    Args:
        arch (str, optional): ``'atto'``, ``'femto'``, ``'pico'``, ``'nano'``, ``'tiny'``, ``'base'``,
            ``'large'`` or ``'huge'``. Defaults to ``'tiny'`` unless ``depths`` and ``dims`` are given.
        depths (tuple[int, ...], optional): Blocks per stage for a custom arch, any number of stages.
            Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage for a custom arch. Defaults to None.
        in_channels (int): Input image channels (HF's ``num_channels``). Defaults to 3.
        patch_size (int): Stem conv kernel and stride (HF's ``patch_size``). Defaults to 4.
        act (str): Block activation by HF ``hidden_act`` name (``'gelu'``, ``'gelu_new'``, ``'relu'``,
            ``'selu'``...). Defaults to ``'gelu'``.
        out_features (Sequence[str], optional): Stage names from ``('stem', 'stage1', ..., 'stageN')``,
            in order. Defaults to None.
        out_indices (Sequence[int], optional): OpenMMLab stage indices (0 = stage1). Defaults to None,
            which with no ``out_features`` selects every stage (not the stem).
        drop_path_rate (float): Stochastic depth of the last block, linear over depth. Defaults to 0.
        init_std (float): Std of the truncated-normal conv / linear init (HF's ``initializer_range``).
            Defaults to 0.02.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k >= 1 the stem and stages 1..k, with their
            output norms; frozen parts stay in eval mode after ``train()``. Defaults to -1.
        with_cp (bool): Activation checkpointing per block. Defaults to False.
        fused_block (bool, optional): The block's fast paths (:mod:`convnextv2_dense.models.fused`; same
            parameters and results), on CUDA where Triton is installed: without gradients the depthwise 7x7
            convolution and its LayerNorm as one Triton pass (maps up to 256 channels; ``torch.compile``
            included); and GELU -> GRN -> Linear as one function with Triton kernels for GELU and the GRN
            statistics, GRN folded into the Linear's weight on large maps with many images and applied in a
            Triton pass on the others. None: each where it measured faster on an H100 (training: the GRN fold
            on maps with at least 8 pixels per channel and 65,536 pixels in the batch, and every block from 32
            images on; inference: both paths where the batch has 65,536 pixels or more); True: in every
            block; False: neither (the plain PyTorch block, cuDNN's convolution). The CPU, tracing and export
            always run the plain block. Defaults to None.
        compile (bool | dict): ``torch.compile`` of the forward pass, for training: it runs compiled only
            in train mode with gradients enabled, and never while the model is traced, scripted, exported
            (ONNX, ``torch.export``) or FX-traced, so test, inference, FLOPs counting and export run eager.
            A dict holds ``torch.compile`` keyword arguments (``mode``, ``dynamic``, ...) and our own
            ``inference`` (bool): True compiles eval and no-grad calls too. Compiling fuses LayerNorm, GELU
            and GRN into far fewer kernels: about twice the backbone's training throughput on a GPU. The
            first step compiles (about a minute); each new input shape compiles again (``dynamic`` defaults
            to False: torch 2.13's inductor fails on this model's dynamic-shape graphs). When the compiled
            forward is built, mmdet's ``DYNAMO_CACHE_SIZE_LIMIT`` environment variable, if set, becomes
            dynamo's cache size limit. Defaults to False.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads weights in
            :meth:`init_weights` through the strict loader of :mod:`convnextv2_dense.weights`.
            Defaults to None.
    """

    LOAD_MAY_BE_MISSING = frozenset({'out_norm'})  # fresh in every classification checkpoint
    LOAD_MAY_BE_UNUSED = frozenset({'out_norm', 'head_norm', 'head'})  # a classifier's pooled norm and head

    def __init__(self,
                 arch: str | None = None,
                 *,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None,
                 in_channels: int = 3,
                 patch_size: int = 4,
                 act: str = 'gelu',
                 out_features: Sequence[str] | None = None,
                 out_indices: Sequence[int] | None = None,
                 drop_path_rate: float = 0.0,
                 init_std: float = 0.02,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 fused_block: bool | None = None,
                 compile: bool | dict = False,
                 init_cfg: dict | None = None) -> None:
        if arch is None and depths is None and dims is None:
            arch = 'tiny'
        names = stage_names(resolve_arch(arch, depths, dims).num_stages)
        selected = select_stages(out_features, out_indices, names)
        last_stage = max(names.index(name) for name in selected)
        super().__init__(arch, depths=depths, dims=dims, in_channels=in_channels, patch_size=patch_size,
                         act=act, drop_path_rate=drop_path_rate, init_std=init_std, with_cp=with_cp,
                         num_built_stages=last_stage)
        if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int)
                or not -1 <= frozen_stages <= self.num_stages):
            raise ValueError(f'frozen_stages must be an integer in [-1, {self.num_stages}], got {frozen_stages!r}')
        if init_cfg is not None and not (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'
                                         and init_cfg.get('checkpoint')):
            raise ValueError("init_cfg must be None or dict(type='Pretrained', checkpoint=PATH_OR_URL), "
                             f'got {init_cfg!r}')
        self.out_features = selected
        self.out_indices = tuple(mm_index(name, names) for name in selected)
        channels, strides = self.stage_channels(), self.stage_strides()
        self.out_channels = tuple(channels[name] for name in selected)
        self.strides = tuple(strides[name] for name in selected)
        self.frozen_stages = frozen_stages
        if not (fused_block is None or isinstance(fused_block, bool)):
            raise ValueError(f'fused_block must be None, True or False, got {fused_block!r}')
        self.fused_block = fused_block
        for module in self.modules():
            if isinstance(module, Block):
                module.fused_block = fused_block
        self.compile_cfg, self.compile_inference = compile_settings(compile)
        self.init_cfg = init_cfg
        self.out_norms = nn.ModuleDict({name: LayerNorm2d(channels[name]) for name in selected})
        self._freeze()

    @classmethod
    def from_hf_config(cls, config: HFConfig, **overrides: Any) -> 'ConvNeXtV2':
        """The backbone an HF ``ConvNextV2Config`` describes (random weights; see ``from_pretrained``).

        HF's ``out_indices`` count the stem as 0 (ours: 0 is stage1); the config's selection is
        therefore passed on as ``out_features`` names, so ``out_indices=[0, 2]`` in HF terms selects
        ``['stem', 'stage2']`` here. With neither field the selection is HF's default, the last stage.
        ``image_size`` is ignored (HF's model does not use it either); ``layer_norm_eps`` only sets
        HF's pooled norm, which a backbone does not have. Field by field: :mod:`.hf_config`.

        Args:
            config (ConvNextV2Config | dict | str | PathLike): The config object, its dict, or the path
                of a ``config.json`` or its folder.
            **overrides: Constructor arguments that replace the config's (``out_indices`` or
                ``out_features`` replace its selection).

        Returns:
            ConvNeXtV2: The equivalent backbone.

        Raises:
            ValueError: A config field we cannot honour, named with its value.
        """
        kwargs = hf_arch_kwargs(config)
        if 'out_features' not in overrides and 'out_indices' not in overrides:
            kwargs['out_features'] = hf_out_features_of(config)
        return cls(**{**kwargs, **overrides})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return a tuple of NCHW feature maps, one per selected stage, in stage order."""
        if x.dim() == 4 and min(x.shape[-2:]) < max(self.strides):
            raise ValueError(f'input of size {x.shape[-2]}x{x.shape[-1]} is smaller than the total stride of the '
                             f'selected stages: give at least {max(self.strides)}x{max(self.strides)} pixels')
        if self._runs_compiled():
            return self._compiled_features()(x)
        return self._features(x)

    def _runs_compiled(self) -> bool:
        # Compiled where it pays: training steps (every call with inference=True), and never while a graph
        # of the model is being captured (jit trace/script, ONNX export, FX, dynamo, torch.export).
        if self.compile_cfg is None or is_capturing():
            return False
        return self.compile_inference or (self.training and torch.is_grad_enabled())

    def _compiled_features(self):
        # Cached per module object, so a deep copy (EMA, model wrappers) compiles its own forward.
        owner, fn = self.__dict__.get('_compiled', (None, None))
        if owner != id(self):
            apply_dynamo_cache_size_limit()
            fn = torch.compile(self._features, **self.compile_cfg)
            self.__dict__['_compiled'] = (id(self), fn)
        return fn

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Inside the trunk every LayerNorm leaves its output channels-last (fast for the convs that follow).
        # The outputs go back to the input's layout: raw-pointer CUDA/C++ ops downstream, such as mmcv's
        # RoIAlign, index their input as contiguous NCHW and silently read channels-last tensors wrong.
        layout = memory_layout(x)
        outs = []
        for name, feature in self.iter_stages(x):
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
        """The stem, stages 1..k, their downsamplers and their output norms, for ``frozen_stages=k``
        (those that are built)."""
        if self.frozen_stages < 0:
            return []
        names = self.stage_names[:self.frozen_stages + 1]
        modules: list[nn.Module] = [self.downsample_layers[0]]
        for k in range(1, min(self.frozen_stages, self.num_built_stages) + 1):
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


TORCH_COMPILE_ARGS = tuple(name for name in inspect.signature(torch.compile).parameters if name != 'model')


def compile_settings(compile: bool | dict) -> tuple[dict | None, bool]:
    """``compile`` -> (``torch.compile`` keyword arguments or None when off, whether inference compiles too).

    Raises:
        ValueError: Not a bool or dict, a key ``torch.compile`` does not take, or a non-bool ``inference``.
    """
    if not isinstance(compile, (bool, dict)):
        raise ValueError('compile must be a bool or a dict of torch.compile arguments (plus inference=True/False), '
                         f'got {compile!r}')
    if compile is False:
        return None, False
    kwargs = dict(compile) if isinstance(compile, dict) else {}
    inference = kwargs.pop('inference', False)
    if not isinstance(inference, bool):
        raise ValueError(f'compile: inference must be True or False, got {inference!r}')
    unknown = sorted(set(kwargs) - set(TORCH_COMPILE_ARGS))
    if unknown:
        raise ValueError(f'compile: torch.compile takes no {", ".join(map(repr, unknown))}; '
                         f'its arguments are {", ".join(TORCH_COMPILE_ARGS)} (and ours, inference)')
    kwargs.setdefault('dynamic', False)  # a new shape recompiles: dynamic-shape graphs of it fail in inductor
    return kwargs, inference


DYNAMO_CACHE_SIZE_LIMIT = 'DYNAMO_CACHE_SIZE_LIMIT'


def apply_dynamo_cache_size_limit() -> int | None:
    """Set dynamo's cache size limit from ``$DYNAMO_CACHE_SIZE_LIMIT``, as mmdet's ``tools/train.py`` does.

    Returns:
        int | None: The limit set, or None when the variable is not set (torch's default stays).

    Raises:
        ValueError: The variable is set to something other than a non-negative integer.
    """
    text = os.environ.get(DYNAMO_CACHE_SIZE_LIMIT)
    if text is None:
        return None
    if not text.strip().isdigit():
        raise ValueError(f'{DYNAMO_CACHE_SIZE_LIMIT} must be a non-negative integer, got {text!r}')
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = int(text)
    return int(text)
