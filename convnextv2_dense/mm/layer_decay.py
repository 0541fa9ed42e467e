"""Layer ids for layer-wise and stage-wise learning-rate decay, with the upstream meaning.

The ids are those of the official ConvNeXt dense code (``get_num_layer_layer_wise`` /
``get_num_layer_stage_wise``) and of mmdet's / mmseg's ``LearningRateDecayOptimizerConstructor``; the
lr scale of id ``i`` is ``decay_rate ** (num_layers + 1 - i)``, so the head (id ``num_layers + 1``)
keeps the base lr:

- ``layer_wise``: stem 0; stage1 1; stage2 and its downsampler 2; stage3's downsampler 3 and its block
  j ``3 + j // 3``; stage4 and its downsampler ``num_layers``.
- ``stage_wise``: every downsampler, the stem included, 0; stage i (1-based) i.

``num_layers`` may be given as upstream configs do (12 in the published recipes). Left out, it is
what the depths imply: ``3 + ceil(depth3 / 3)`` for ``layer_wise`` (12 for base/large/huge, 5 for
atto..pico) and the number of stages for ``stage_wise`` (the head one step above the last stage).
A given ``num_layers`` above the implied one leaves a gap between the last stage and the head (the
V1 ADE20K recipe, ``stage_wise`` with 12, puts stage4 nine steps below the head); below it, ids
would overtake the head and it is refused.

Any number of stages: stage 1 gets 1; each stage between the first and the next-to-last gets one id
(with its downsampler); the next-to-last stage (the deep one) is ranked in groups of three blocks
after its downsampler; the last stage (and its downsampler) is ``num_layers``. For four stages that
is exactly the rule above.

The structure comes from the model's own name parser (:class:`~convnextv2_dense.models.naming.
ParamPosition`); nothing here reads parameter names.
"""
from __future__ import annotations

import math

from ..models.naming import ParamPosition

DECAY_TYPES: tuple[str, ...] = ('layer_wise', 'stage_wise')
DEEP_STAGE_GROUP = 3  # blocks of the next-to-last stage per layer id (official: ``block_id // 3``)


def _check_type(decay_type: str) -> None:
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')


def implied_num_layers(depths: tuple[int, ...], decay_type: str) -> int:
    """The ``num_layers`` the depths imply: the id of the last stage's layers.

    Args:
        depths (tuple[int, ...]): Blocks per stage, any number of stages.
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.

    Returns:
        int: For ``layer_wise`` ``(N - 1) + ceil(depths[N-2] / 3)`` (four stages:
        ``3 + ceil(depth3 / 3)``; one stage: 1); for ``stage_wise`` the number of stages N.
    """
    _check_type(decay_type)
    n = len(depths)
    if decay_type == 'stage_wise' or n == 1:
        return n
    return (n - 1) + math.ceil(depths[n - 2] / DEEP_STAGE_GROUP)


def check_num_layers(depths: tuple[int, ...], decay_type: str, num_layers: int) -> None:
    """Refuse a ``num_layers`` that would put backbone layers at or above the head.

    Raises:
        ValueError: ``num_layers`` not an integer, or below what the depths imply.
    """
    implied = implied_num_layers(depths, decay_type)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < implied:
        raise ValueError(f'num_layers={num_layers!r} is below the {implied} layers that {decay_type} decay '
                         f'needs for depths {tuple(depths)}; leave it out to use {implied}')


def layer_id(position: ParamPosition | None, depths: tuple[int, ...], decay_type: str,
             num_layers: int | None = None) -> int:
    """The decay id of a backbone parameter.

    Args:
        position (ParamPosition, optional): Where the parameter sits (from the backbone's
            ``param_position``); None or anything outside the trunk (output norms) is the head.
        depths (tuple[int, ...]): The backbone's blocks per stage.
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.
        num_layers (int, optional): The id of the last stage; None for :func:`implied_num_layers`.
            Defaults to None.

    Returns:
        int: 0 for the stem up to ``num_layers`` for the last stage; ``num_layers + 1`` for the head.
    """
    last = implied_num_layers(depths, decay_type) if num_layers is None else num_layers
    if position is None or not position.in_trunk:
        return last + 1
    if decay_type == 'stage_wise':
        return 0 if position.kind in ('stem', 'downsample') else position.stage + 1
    n, stage = len(depths), position.stage
    if position.kind == 'stem':
        return 0
    if stage == n - 1:
        return last
    if stage == n - 2 and position.kind == 'block':
        return stage + 1 + position.block // DEEP_STAGE_GROUP
    return stage + 1


def lr_scale(position: ParamPosition | None, depths: tuple[int, ...], decay_type: str, decay_rate: float,
             num_layers: int | None = None) -> float:
    """``decay_rate ** (num_layers + 1 - layer_id)``: 1 for the head, smallest for the stem."""
    last = implied_num_layers(depths, decay_type) if num_layers is None else num_layers
    return decay_rate ** (last + 1 - layer_id(position, depths, decay_type, last))


def no_weight_decay(position: ParamPosition | None, name: str, param_ndim: int) -> bool:
    """Biases, norms and GRN gamma/beta (whatever their shape) are not decayed.

    Args:
        position (ParamPosition, optional): The parameter's place in the backbone, None elsewhere.
        name (str): The parameter's full name (for ``.bias``).
        param_ndim (int): Its number of dimensions: every 1-D parameter is exempt.
    """
    if param_ndim <= 1 or name.endswith('.bias'):
        return True
    return position is not None and (position.part in ('grn', 'norm') or 'norm' in position.kind)
