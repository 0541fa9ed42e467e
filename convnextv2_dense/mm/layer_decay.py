"""Layer ids for layer-wise and stage-wise learning-rate decay, computed from the real depths.

Pure functions of a parameter name and the backbone's depths, so they can be read and tested without
OpenMMLab. ``layer_wise`` follows the official ConvNeXt grouping: stem 0, stage1 1, stage2 2, stage3 in
groups of three blocks, stage4 last; for base that gives the 12 layers mm configs hard-code, and for
any other arch the right number without a magic ``num_layers``. ``stage_wise`` gives the stem 0 and
stage i (its downsampler included) i. Anything outside the backbone, and the backbone's fresh output
norms, is the head: lr scale 1.
"""
from __future__ import annotations

import math
import re

DECAY_TYPES: tuple[str, ...] = ('layer_wise', 'stage_wise')
STAGE3_GROUP = 3

_DOWNSAMPLE = re.compile(r'^downsample_layers\.(\d+)\.')
_BLOCK = re.compile(r'^stages\.(\d+)\.(\d+)\.')


def num_decay_layers(depths: tuple[int, ...], decay_type: str) -> int:
    """The id of the last backbone layer (stage4); the head is one more."""
    if decay_type == 'layer_wise':
        return 3 + math.ceil(depths[2] / STAGE3_GROUP)
    if decay_type == 'stage_wise':
        return 4
    raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')


def layer_id(name: str, depths: tuple[int, ...], decay_type: str) -> int:
    """The decay layer of a backbone parameter name (without the ``backbone.`` prefix).

    Args:
        name (str): e.g. ``'stages.2.5.pwconv1.weight'``.
        depths (tuple[int, ...]): The backbone's blocks per stage.
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.

    Returns:
        int: 0 for the stem up to :func:`num_decay_layers` for stage4; one more for everything else.
    """
    last = num_decay_layers(depths, decay_type)
    downsample, block = _DOWNSAMPLE.match(name), _BLOCK.match(name)
    stage = int((downsample or block).group(1)) if (downsample or block) else None
    if stage is None:
        return last + 1
    if decay_type == 'stage_wise':
        return 0 if downsample and stage == 0 else stage + 1
    if downsample:
        return (0, 2, 3, last)[stage]
    if stage == 2:
        return 3 + int(block.group(2)) // STAGE3_GROUP
    return (1, 2, None, last)[stage]


def lr_scale(name: str, depths: tuple[int, ...], decay_type: str, decay_rate: float) -> float:
    """``decay_rate ** (head_id - layer_id)``: 1 for the head, smallest for the stem."""
    head = num_decay_layers(depths, decay_type) + 1
    return decay_rate ** (head - layer_id(name, depths, decay_type))


def no_weight_decay(name: str, param_ndim: int) -> bool:
    """Biases, norms and GRN gamma/beta (whatever their shape) are not decayed."""
    return param_ndim <= 1 or name.endswith('.bias') or '.grn.' in name
