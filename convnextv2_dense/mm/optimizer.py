"""``ConvNeXtV2LayerDecayOptimizerConstructor``: AdamW param groups with layer-wise lr decay.

Use in an mm config::

    optim_wrapper = dict(
        constructor='ConvNeXtV2LayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))

Layer ids come from ``model.backbone.depths`` (see :mod:`.layer_decay`); there is no ``num_layers``.
"""
from __future__ import annotations

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from .layer_decay import DECAY_TYPES, lr_scale, no_weight_decay

PARAMWISE_DEFAULTS = {'decay_rate': 1.0, 'decay_type': 'layer_wise'}


class ConvNeXtV2LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Param groups by (layer, decay or not) for a model whose ``backbone`` is a ConvNeXt V2.

    ``paramwise_cfg`` keys:
        decay_rate (float): lr multiplier per layer towards the stem. Defaults to 1 (no decay).
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``. Defaults to ``'layer_wise'``.
    Weight decay is ``weight_decay`` for weights of rank >= 2 and 0 for biases, norms and GRN.
    Frozen parameters are left out.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        # The parent builds plain `model.parameters()` (skipping add_params) when paramwise_cfg is
        # empty; spelling out the defaults keeps GRN, norms and biases out of weight decay even then.
        super().__init__(optim_wrapper_cfg, {**PARAMWISE_DEFAULTS, **(paramwise_cfg or {})})

    def _validate_cfg(self) -> None:
        unknown = set(self.paramwise_cfg) - set(PARAMWISE_DEFAULTS)
        if unknown:
            raise ValueError(f'ConvNeXtV2LayerDecayOptimizerConstructor: unknown paramwise_cfg keys '
                             f'{sorted(unknown)}; allowed: decay_rate, decay_type')
        decay_type = self.paramwise_cfg['decay_type']
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
        rate = self.paramwise_cfg['decay_rate']
        if not 0.0 < rate <= 1.0:
            raise ValueError(f'decay_rate must be in (0, 1], got {rate!r}')

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        """Fill ``params`` with one group per (lr scale, weight decay) pair."""
        backbone = getattr(module, 'backbone', None)
        depths = getattr(backbone, 'depths', None)
        if depths is None or not hasattr(backbone, 'downsample_layers'):
            raise TypeError('ConvNeXtV2LayerDecayOptimizerConstructor needs a model whose `backbone` is a '
                            f'ConvNeXtV2, got {type(backbone).__name__}')
        decay_type, rate = self.paramwise_cfg['decay_type'], self.paramwise_cfg['decay_rate']
        groups: dict[tuple[float, float], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            in_backbone = name.startswith('backbone.')
            scale = lr_scale(name[len('backbone.'):], depths, decay_type, rate) if in_backbone else 1.0
            weight_decay = 0.0 if no_weight_decay(name, param.ndim) else (self.base_wd or 0.0)
            group = groups.setdefault((scale, weight_decay), {
                'params': [], 'param_names': [], 'lr': self.base_lr * scale,
                'lr_scale': scale, 'weight_decay': weight_decay})
            group['params'].append(param)
            group['param_names'].append(name)
        params.extend(groups[key] for key in sorted(groups, key=lambda k: (k[0], -k[1])))
        print_log(f'layer-decay ({decay_type}, rate {rate}): {len(groups)} param groups, lr scale '
                  f'{min(k[0] for k in groups):.4f}..{max(k[0] for k in groups):.4f}', logger='current')
