"""mmseg's UPerHead and FCNHead with a faster training step: same layers, parameters, losses and logs.

``UPerHeadFast`` / ``FCNHeadFast`` (registered in mmseg's MODELS) run the stock head code with two of its
module-level helpers swapped, only for the duration of the call, for the exact replacements in
:mod:`.fast_ops`: ``resize`` (bilinear upsampling whose backward is two small matrix products instead of
atomic scatters) and ``accuracy`` (the logged ``acc_seg`` from an argmax instead of a ``topk`` over all
classes, without host synchronisation). Training in one thread per process, as mmengine does, is assumed.
:data:`STOCK_TYPES` maps each variant to the stock type (the benchmark's 'stock' row uses it).
"""
from __future__ import annotations

import functools
from typing import Any

import torch.nn.functional

from .fast_ops import argmax_accuracy, upsample_bilinear
from .patching import swapped_globals

STOCK_TYPES: dict[str, str] = {'UPerHeadFast': 'UPerHead', 'FCNHeadFast': 'FCNHead'}


def fast_resize(input, size=None, scale_factor=None, mode='nearest', align_corners=None, warning=True):
    """mmseg's ``resize`` signature; bilinear resizes to a given size go through :func:`upsample_bilinear`."""
    if mode == 'bilinear' and size is not None and scale_factor is None:
        return upsample_bilinear(input, size, align_corners)
    return torch.nn.functional.interpolate(input, size, scale_factor, mode, align_corners)


def fast_accuracy(pred, target, topk=1, thresh=None, ignore_index=None):
    """mmseg's ``accuracy`` signature; top-1 without threshold is :func:`argmax_accuracy`."""
    if topk in (1, (1,)) and thresh is None:
        acc = argmax_accuracy(pred, target, ignore_index)
        return acc if topk == 1 else [acc]
    from mmseg.models.losses import accuracy
    return accuracy(pred, target, topk, thresh, ignore_index)


def _variant(name: str, base: type, forward_module: str | None) -> type:
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead

    def loss_by_feat(self, seg_logits, batch_data_samples):
        with swapped_globals('mmseg.models.decode_heads.decode_head', resize=fast_resize, accuracy=fast_accuracy):
            return BaseDecodeHead.loss_by_feat(self, seg_logits, batch_data_samples)

    def forward(self, inputs):
        with swapped_globals(forward_module, resize=fast_resize):
            return base.forward(self, inputs)

    members = dict(loss_by_feat=loss_by_feat, __module__=__name__,
                   __doc__=f"mmseg's {base.__name__} with exact faster resizes and accuracy in training "
                           f'(convnextv2_dense.mm.fast_heads); arguments as {base.__name__}.')
    if forward_module is not None:
        members['forward'] = forward
    return type(name, (base,), members)


@functools.cache
def head_classes() -> dict[str, type]:
    """The variants, built on first use (importing mmseg's heads only then)."""
    from mmseg.models.decode_heads import FCNHead, UPerHead
    return {'UPerHeadFast': _variant('UPerHeadFast', UPerHead, 'mmseg.models.decode_heads.uper_head'),
            'FCNHeadFast': _variant('FCNHeadFast', FCNHead, None)}


def build_uper_head_fast(**kwargs: Any):
    """Registry entry for ``type='UPerHeadFast'`` (arguments as mmseg's UPerHead)."""
    return head_classes()['UPerHeadFast'](**kwargs)


def build_fcn_head_fast(**kwargs: Any):
    """Registry entry for ``type='FCNHeadFast'`` (arguments as mmseg's FCNHead)."""
    return head_classes()['FCNHeadFast'](**kwargs)
