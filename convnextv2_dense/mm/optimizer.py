"""``ConvNeXtV2LayerDecayOptimizerConstructor``: AdamW param groups with layer-wise lr decay.

Use in an mm config::

    optim_wrapper = dict(
        constructor='ConvNeXtV2LayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))

Layer ids mean what they mean in mmdet's / mmseg's ``LearningRateDecayOptimizerConstructor`` (see
:mod:`.layer_decay`); ``num_layers`` is optional and defaults to what ``model.backbone.depths`` imply.
The backbone tells where each parameter sits (its ``param_position``); no name is parsed here.
"""
from __future__ import annotations

import warnings

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from .layer_decay import DECAY_TYPES, check_num_layers, implied_num_layers, lr_scale, no_weight_decay

PARAMWISE_DEFAULTS = {'decay_rate': 1.0, 'decay_type': 'layer_wise', 'num_layers': None}


class ConvNeXtV2LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Param groups by (layer, decay or not) for a model whose ``backbone`` is a ConvNeXt V2.

    ``paramwise_cfg`` keys:
        decay_rate (float): lr multiplier per layer towards the stem. Defaults to 1 (no decay).
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``, with the stock constructor's ids.
            Defaults to ``'layer_wise'``.
        num_layers (int, optional): The id of the last stage, as in stock configs (the head is one
            more). Defaults to None: what the backbone's depths imply (a warning says when a given
            value differs from that).
    Weight decay is ``weight_decay`` for weights of rank >= 2 and 0 for biases, norms and GRN (the
    stock constructor decays any GRN of rank >= 2, e.g. the official 4-D one; ours never does).
    Frozen parameters are left out. The model's ``backbone`` must have ``depths`` and
    ``param_position(name)`` (as :class:`~convnextv2_dense.models.ConvNeXtV2` has).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        # The parent builds plain `model.parameters()` (skipping add_params) when paramwise_cfg is
        # empty; spelling out the defaults keeps GRN, norms and biases out of weight decay even then.
        super().__init__(optim_wrapper_cfg, {**PARAMWISE_DEFAULTS, **(paramwise_cfg or {})})

    def _validate_cfg(self) -> None:
        unknown = set(self.paramwise_cfg) - set(PARAMWISE_DEFAULTS)
        if unknown:
            raise ValueError(f'ConvNeXtV2LayerDecayOptimizerConstructor: unknown paramwise_cfg keys '
                             f'{sorted(unknown)}; allowed: {", ".join(PARAMWISE_DEFAULTS)}')
        decay_type = self.paramwise_cfg['decay_type']
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
        rate = self.paramwise_cfg['decay_rate']
        if not 0.0 < rate <= 1.0:
            raise ValueError(f'decay_rate must be in (0, 1], got {rate!r}')
        num_layers = self.paramwise_cfg['num_layers']
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)):
            raise ValueError(f'num_layers must be None or an integer, got {num_layers!r}')

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        """Fill ``params`` with one group per (lr scale, weight decay) pair."""
        backbone = getattr(module, 'backbone', None)
        depths = getattr(backbone, 'depths', None)
        position_of = getattr(backbone, 'param_position', None)
        if depths is None or not callable(position_of):
            raise TypeError('ConvNeXtV2LayerDecayOptimizerConstructor needs a model whose `backbone` is a '
                            f'ConvNeXtV2 (with depths and param_position), got {type(backbone).__name__}')
        decay_type, rate = self.paramwise_cfg['decay_type'], self.paramwise_cfg['decay_rate']
        num_layers = self.paramwise_cfg['num_layers']
        implied = implied_num_layers(tuple(depths), decay_type)
        if num_layers is None:
            num_layers = implied
        else:
            check_num_layers(tuple(depths), decay_type, num_layers)
            if num_layers != implied:
                where = ('the last stage and the head' if decay_type == 'stage_wise'
                         else 'the next-to-last stage and the last one')
                warnings.warn(f'layer-decay: num_layers={num_layers} differs from the {implied} that {decay_type} '
                              f'implies for depths {tuple(depths)}; between {where} the lr falls by '
                              f'decay_rate ** {num_layers + 1 - implied} instead of decay_rate (as in the stock '
                              'LearningRateDecayOptimizerConstructor with this num_layers)', stacklevel=2)
        groups: dict[tuple[float, float], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            position = position_of(name[len('backbone.'):]) if name.startswith('backbone.') else None
            scale = lr_scale(position, tuple(depths), decay_type, rate, num_layers) if position else 1.0
            weight_decay = 0.0 if no_weight_decay(position, name, param.ndim) else (self.base_wd or 0.0)
            group = groups.setdefault((scale, weight_decay), {
                'params': [], 'param_names': [], 'lr': self.base_lr * scale,
                'lr_scale': scale, 'weight_decay': weight_decay})
            group['params'].append(param)
            group['param_names'].append(name)
        params.extend(groups[key] for key in sorted(groups, key=lambda k: (k[0], -k[1])))
        print_log(f'layer-decay ({decay_type}, rate {rate}, num_layers {num_layers}): {len(groups)} param groups, '
                  f'lr scale {min(k[0] for k in groups):.4f}..{max(k[0] for k in groups):.4f}', logger='current')
