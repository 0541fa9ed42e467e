"""The backbones the benchmarks compare: ours (fused block or plain, eager or compiled), HF's, timm's.

Imports only torch and :mod:`convnextv2_dense.models`; transformers and timm when a row needs them.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import nn

from ..models import ConvNeXtV2, resolve_arch, select_stages
from ..models import fused
from ..models.backbone import memory_layout
from ..models.naming import ParamPosition, parse_param_name
from ..models.stage_selection import INDEXED_STAGES

# ours: the default (fused block in training on CUDA where Triton is installed and the shape pays);
# ours-plain: the plain PyTorch block; ours-fused: the fused block everywhere, in inference too;
# -compile: torch.compile of the whole backbone (which runs the plain block: the compiler fuses it itself;
# ours-fused-compile keeps the Triton depthwise convolution (inference) and the block's MLP in its two Triton
# matmuls (inference and training) in the compiled graph as custom ops);
# ours-matmuls: ours-fused with GRN applied in the two Triton matmuls where it is not folded (not yet a default);
# ours-bf16-norm: ours with the blocks' LayerNorm in bf16 under bf16 autocast (fused.NORM_IN_BF16, not yet a default).
IMPLS: tuple[str, ...] = ('ours', 'ours-plain', 'ours-fused', 'ours-matmuls', 'ours-bf16-norm', 'ours-compile',
                          'ours-fused-compile', 'hf', 'timm', 'timm-compile')
# Rows of the full-iteration benchmark (.full): as above, plus 'stock': the plain block with the stock mm
# components (heads, optimizer flags) in place of the fast variants our configs use: the "before" row.
FULL_IMPLS: tuple[str, ...] = ('stock', 'ours', 'ours-eager', 'ours-plain', 'ours-fused', 'ours-compile', 'hf')
NEEDS = {'hf': 'transformers', 'timm': 'timm'}  # impl -> package it needs


class HFBackbone(nn.Module):
    """HF transformers' ``ConvNextV2Backbone`` (random init) returning a tuple of NCHW maps, as ours does.

    Args:
        arch (str, optional): Arch name. Defaults to 'tiny'.
        depths (tuple[int, ...], optional): Custom depths, with ``dims``. Defaults to None.
        dims (tuple[int, ...], optional): Custom widths. Defaults to None.
        out_indices (Sequence[int]): OpenMMLab stage indices (0 = stage1). Defaults to (0, 1, 2, 3).
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        init_cfg (dict, optional): Must be None (random weights only). Defaults to None.
    """

    def __init__(self, arch: str | None = 'tiny', *, depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None, out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.0, init_cfg: dict | None = None) -> None:
        from transformers import ConvNextV2Backbone, ConvNextV2Config
        super().__init__()
        if init_cfg is not None:
            raise ValueError(f'HFBackbone is for benchmarks with random weights; init_cfg must be None, got {init_cfg}')
        spec = resolve_arch(arch if depths is None else None, depths, dims)
        names = select_stages(None, out_indices)
        self.depths = spec.depths
        self.out_channels = tuple(dict(zip(INDEXED_STAGES, spec.dims))[name] for name in names)
        self.hf = ConvNextV2Backbone(ConvNextV2Config(depths=list(spec.depths), hidden_sizes=list(spec.dims),
                                                      drop_path_rate=drop_path_rate, out_features=list(names)))

    def param_position(self, name: str) -> ParamPosition | None:
        """Where HF's parameter ``name`` sits in ConvNeXt V2 terms, so our layer-decay constructor gives this
        backbone the same param groups and learning rates as ours."""
        from ..weights.formats import canonical_key  # bench sits above weights; the models room does not
        return parse_param_name(canonical_key(name.removeprefix('hf.'), 'hf') or '')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # HF's maps come out channels-last-strided whatever the input; mmcv's RoIAlign would misread them.
        layout = memory_layout(x)
        return tuple(f.contiguous(memory_format=layout) for f in self.hf(pixel_values=x).feature_maps)


class SwitchedBackbone(ConvNeXtV2):
    """Ours with one of :data:`fused.SWITCHES <convnextv2_dense.models.fused.SWITCHES>` on while it runs
    forward (the rows of paths that are not defaults yet).

    Args:
        switch (str): The switch's name.
        *args, **kwargs: :class:`ConvNeXtV2`'s.
    """

    def __init__(self, switch: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.switch = switch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with fused.switched(self.switch):
            return super().forward(x)


def build_backbone(impl: str, arch: str) -> nn.Module:
    """An uncompiled backbone with random weights returning all four stage outputs."""
    base = impl.removesuffix('-compile')
    if base == 'ours-matmuls':
        return SwitchedBackbone('APPLIED_IN_MATMULS', arch, out_indices=(0, 1, 2, 3), fused_block=True)
    if base == 'ours-bf16-norm':
        return SwitchedBackbone('NORM_IN_BF16', arch, out_indices=(0, 1, 2, 3))
    if base in ('ours', 'ours-plain', 'ours-fused'):
        fused = {'ours': None, 'ours-fused': True}.get(base, False)
        return ConvNeXtV2(arch, out_indices=(0, 1, 2, 3), fused_block=fused)
    if base == 'hf':
        return HFBackbone(arch)
    if base == 'timm':
        import timm
        return timm.create_model(f'convnextv2_{arch}', pretrained=False, features_only=True)
    raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')


def installed(impl: str) -> bool:
    """Whether the package an impl needs (transformers, timm) is importable."""
    package = NEEDS.get(impl.removesuffix('-compile'))
    return package is None or importlib.util.find_spec(package) is not None
