"""A checkpoint's arch: inferred from its canonical keys and shapes, or declared by its config / meta.

The structure is read through the models' own name parser (:func:`~convnextv2_dense.models.naming.
parse_param_name`), never re-parsed here.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..models.archs import ArchSpec, arch_name
from ..models.naming import parse_param_name
from .io import CheckpointError


def stage_depths(state_dict: Mapping[str, torch.Tensor]) -> dict[int, int]:
    """Blocks per stage present in a canonical state dict: stage -> one more than its largest block index."""
    depths: dict[int, int] = {}
    for key in state_dict:
        position = parse_param_name(key)
        if position is not None and position.kind == 'block':
            depths[position.stage] = max(depths.get(position.stage, 0), position.block + 1)
    return depths


def _stage_width(state_dict: Mapping[str, torch.Tensor], stage: int, where: str) -> int:
    dwconv = state_dict.get(f'stages.{stage}.0.dwconv.weight')
    if dwconv is None:
        raise CheckpointError(f'{where}: cannot infer the arch, stage {stage} has no stages.{stage}.0.dwconv.weight')
    return int(dwconv.shape[0])


def infer_arch(state_dict: Mapping[str, torch.Tensor], where: str = 'checkpoint') -> ArchSpec:
    """Depths and widths of a canonical state dict, from its keys and shapes, for any number of stages.

    Depth of stage i is one more than its largest block index; width is the depthwise conv's channels.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors under canonical keys.
        where (str): Names the checkpoint in messages. Defaults to ``'checkpoint'``.

    Raises:
        CheckpointError: No stage at all, or a stage without blocks before the last one.
    """
    depths = stage_depths(state_dict)
    if not depths:
        raise CheckpointError(f'{where}: cannot infer the arch, it holds no block (no stages.0.0.dwconv.weight)')
    num_stages = max(depths) + 1
    for stage in range(num_stages):
        if stage not in depths:
            raise CheckpointError(f'{where}: cannot infer the arch, stage {stage} has no blocks '
                                  f'but stage {num_stages - 1} has')
    return ArchSpec(tuple(depths[i] for i in range(num_stages)),
                    tuple(_stage_width(state_dict, i, where) for i in range(num_stages)))


def check_declared_arch(spec: ArchSpec, state_dict: Mapping[str, torch.Tensor], where: str, by: str) -> None:
    """Check that the stages a checkpoint holds are those its config or meta declares.

    A backbone that built only its first stages saves only those, so fewer stages than declared are
    fine; any stage it holds must have the declared depth and width.

    Args:
        spec (ArchSpec): The declared arch.
        state_dict (Mapping[str, torch.Tensor]): Tensors under canonical keys.
        where (str): Names the checkpoint in messages.
        by (str): What declares the arch (``'config.json'``, ``'its meta'``), for messages.

    Raises:
        CheckpointError: A stage beyond the declared ones, or of another depth or width.
    """
    for stage, depth in sorted(stage_depths(state_dict).items()):
        if stage >= spec.num_stages:
            raise CheckpointError(f'{where}: holds stage {stage} (0-based), but {by} declares '
                                  f'{spec.num_stages} stages (depths={spec.depths})')
        width = _stage_width(state_dict, stage, where)
        if (depth, width) != (spec.depths[stage], spec.dims[stage]):
            raise CheckpointError(f'{where}: stage {stage} (0-based) holds {depth} blocks of width {width}, but {by} '
                                  f'declares depths={spec.depths}, dims={spec.dims}')


def describe_arch(spec: ArchSpec) -> str:
    """``'tiny'``, or ``'custom (depths=..., dims=...)'``."""
    return arch_name(spec) or f'custom (depths={spec.depths}, dims={spec.dims})'


def covers_built_stages(ckpt: ArchSpec, model: ArchSpec, built: int | None) -> bool:
    """Whether a checkpoint of arch ``ckpt`` fits a model of arch ``model`` that builds ``built`` stages:
    the same arch, or the same first ``built`` stages (the ones the model runs)."""
    if ckpt == model:
        return True
    if built is None or built >= model.num_stages or ckpt.num_stages < built:
        return False
    return ckpt.depths[:built] == model.depths[:built] and ckpt.dims[:built] == model.dims[:built]
