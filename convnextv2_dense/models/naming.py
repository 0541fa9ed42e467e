"""The one parser of ConvNeXt V2 parameter names: where in the network a tensor sits.

The models' ``state_dict()`` keys keep the official layout::

    downsample_layers.0.{0,1}.*          stem: conv, LayerNorm
    downsample_layers.{i}.{0,1}.*        downsampler into stage i (0-based, i >= 1): LayerNorm, conv
    stages.{i}.{j}.{part}.*              block j of stage i; part: dwconv, norm, pwconv1, grn, pwconv2
    out_norms.{stem,stage1,...}.*        the backbone's output norms
    norm.*, head.*                       the classifier's pooled LayerNorm and Linear head

Everything that needs the structure (the weight loader, the layer-decay optimizer, tools) asks
:func:`parse_param_name` (or a model's ``param_position``) instead of matching names itself, in the
spirit of timm's ``group_matcher``.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS: tuple[str, ...] = ('stem', 'downsample', 'block', 'out_norm', 'head_norm', 'head')
STEM_PARTS: tuple[str, ...] = ('conv', 'norm')          # downsample_layers.0.{0,1}
DOWNSAMPLE_PARTS: tuple[str, ...] = ('norm', 'conv')    # downsample_layers.i.{0,1}, i >= 1
BLOCK_PARTS: tuple[str, ...] = ('dwconv', 'norm', 'pwconv1', 'grn', 'pwconv2')


@dataclass(frozen=True)
class ParamPosition:
    """Where a parameter (or buffer) sits in a ConvNeXt V2.

    Args:
        kind (str): One of :data:`KINDS`: ``'stem'``, ``'downsample'`` (into a stage), ``'block'``,
            ``'out_norm'`` (a backbone output norm), ``'head_norm'`` (the classifier's pooled norm)
            or ``'head'``.
        stage (int, optional): The 0-based stage (index into ``stages``) for downsamplers, blocks and
            the output norm of a stage; None for the stem, its output norm and the head parts.
            Defaults to None.
        block (int, optional): The block's index within its stage. Defaults to None.
        part (str, optional): The layer inside: ``'conv'`` / ``'norm'`` for the stem and downsamplers,
            one of :data:`BLOCK_PARTS` in a block. Defaults to None.
    """

    kind: str
    stage: int | None = None
    block: int | None = None
    part: str | None = None

    @property
    def in_trunk(self) -> bool:
        """Stem, downsamplers and blocks: the layers a layer-decay schedule ranks."""
        return self.kind in ('stem', 'downsample', 'block')


def _index(text: str) -> int | None:
    return int(text) if text.isdigit() and (text == '0' or not text.startswith('0')) else None


def _stage_of(name: str) -> int | None | bool:
    """0-based stage of an output-norm name (``'stage3'`` -> 2), None for ``'stem'``, False if neither."""
    if name == 'stem':
        return None
    number = _index(name[len('stage'):]) if name.startswith('stage') else None
    return number - 1 if number else False


def parse_param_name(name: str) -> ParamPosition | None:
    """Parse one of our parameter names.

    Args:
        name (str): A ``state_dict()`` key of :class:`ConvNeXtV2` or :class:`ConvNeXtV2Classifier`,
            without any prefix (``'stages.2.5.grn.gamma'``, not ``'backbone.stages...'``).

    Returns:
        ParamPosition | None: Its position, or None when the name is not one of ours.
    """
    parts = name.split('.')
    if len(parts) < 2:
        return None
    root = parts[0]
    if root == 'downsample_layers' and len(parts) >= 4:
        stage, layer = _index(parts[1]), _index(parts[2])
        if stage is None or layer not in (0, 1):
            return None
        if stage == 0:
            return ParamPosition('stem', part=STEM_PARTS[layer])
        return ParamPosition('downsample', stage=stage, part=DOWNSAMPLE_PARTS[layer])
    if root == 'stages' and len(parts) >= 5:
        stage, block = _index(parts[1]), _index(parts[2])
        if stage is None or block is None or parts[3] not in BLOCK_PARTS:
            return None
        return ParamPosition('block', stage=stage, block=block, part=parts[3])
    if root == 'out_norms' and len(parts) == 3:
        stage = _stage_of(parts[1])
        return None if stage is False else ParamPosition('out_norm', stage=stage)
    if root == 'norm' and len(parts) == 2:
        return ParamPosition('head_norm')
    if root == 'head' and len(parts) == 2:
        return ParamPosition('head')
    return None
