"""``ConvNeXtV2LayerDecayOptimizerConstructor`` against the stock mmseg / mmdet constructor it must agree with.

The reference is upstream itself: the stock ``LearningRateDecayOptimizerConstructor`` (the official
ConvNeXt dense code's ids) on the same model, built from a shipped UperNet config, compared parameter by
parameter (lr and weight decay). Where upstream has no answer (other than four stages, ``num_layers``
left out, 4-D GRN) the expectation is spelled out from the documented rule.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from convnextv2_dense import ConvNeXtV2
from convnextv2_dense.mm.optimizer import ConvNeXtV2LayerDecayOptimizerConstructor

mmseg_optimizers = pytest.importorskip('mmseg.engine.optimizers')

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
BASE_LR, BASE_WD, RATE = 1e-3, 0.05, 0.9
OPTIM = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))
_MODELS: dict[str, nn.Module] = {}


def upernet(arch: str) -> nn.Module:
    """The segmentor of the shipped ``upernet_convnextv2_{arch}_ade20k.py`` (no checkpoint), built once."""
    if arch not in _MODELS:
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        cfg = Config.fromfile(str(CONFIGS / f'upernet_convnextv2_{arch}_ade20k.py'))
        init_default_scope(cfg.default_scope)
        cfg.model.backbone.init_cfg = None
        cfg.model.backbone.compile = False
        _MODELS[arch] = MODELS.build(cfg.model)
    return _MODELS[arch]


def ours(model: nn.Module, **paramwise_cfg):
    return ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM, paramwise_cfg=paramwise_cfg)(model)


def stock(model: nn.Module, **paramwise_cfg):
    return mmseg_optimizers.LearningRateDecayOptimizerConstructor(OPTIM, paramwise_cfg=paramwise_cfg)(model)


def per_param(optim_wrapper, model: nn.Module) -> dict[str, tuple[float, float]]:
    groups = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    return {n: (groups[id(p)]['lr'], groups[id(p)]['weight_decay']) for n, p in model.named_parameters()
            if id(p) in groups}


def differences(a: dict, b: dict) -> dict:
    assert a.keys() == b.keys()
    return {n: (a[n], b[n]) for n in a
            if not (math.isclose(a[n][0], b[n][0], rel_tol=1e-9) and a[n][1] == b[n][1])}


# ------------------------------------------------------------------------- the stock constructor
@contextlib.contextmanager
def no_layer_decay_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='layer-decay')
        yield


@pytest.mark.parametrize('arch, cfg, warns', [
    ('base', dict(decay_type='stage_wise', num_layers=12), True),   # the V1 / mmseg ADE20K recipe
    ('base', dict(decay_type='layer_wise', num_layers=12), False),  # the mmdet ConvNeXt-V2 project's
    ('atto', dict(decay_type='layer_wise', num_layers=12), True),
    ('atto', dict(decay_type='layer_wise', num_layers=5), False),
    ('atto', dict(decay_type='stage_wise', num_layers=4), False),
], ids=lambda v: v if isinstance(v, str) else '-'.join(map(str, v.values())) if isinstance(v, dict) else None)
def test_every_param_gets_the_stock_lr_and_weight_decay(arch, cfg, warns):
    model = upernet(arch)
    with pytest.warns(UserWarning, match='differs from the') if warns else no_layer_decay_warning():
        mine = per_param(ours(model, decay_rate=RATE, **cfg), model)
    theirs = per_param(stock(model, decay_rate=RATE, **cfg), model)
    assert not differences(mine, theirs)
    assert len({lr for lr, _ in mine.values()}) > 4  # the comparison is not between two flat schedules


@pytest.mark.parametrize('arch, decay_type, implied', [('base', 'layer_wise', 12), ('atto', 'layer_wise', 5),
                                                       ('tiny', 'layer_wise', 6), ('base', 'stage_wise', 4)])
def test_num_layers_left_out_is_what_the_depths_imply(arch, decay_type, implied):
    model = upernet(arch) if arch != 'tiny' else _segmentor(ConvNeXtV2('tiny'))
    mine = per_param(ours(model, decay_rate=RATE, decay_type=decay_type), model)
    theirs = per_param(stock(model, decay_rate=RATE, decay_type=decay_type, num_layers=implied), model)
    assert not differences(mine, theirs)


def test_atto_layer_wise_ids_are_the_official_function_s():
    # stage 3 of depth 6: blocks 0-2 at id 3 and 3-5 at id 4, as get_layer_id_for_convnext says
    from mmseg.engine.optimizers.layer_decay_optimizer_constructor import get_layer_id_for_convnext

    from convnextv2_dense.mm.layer_decay import layer_id
    backbone = upernet('atto').backbone
    for num_layers in (5, 12):
        for name, _ in backbone.named_parameters():
            want = get_layer_id_for_convnext(f'backbone.{name}', num_layers)
            assert layer_id(backbone.param_position(name), backbone.depths, 'layer_wise', num_layers) == want, name
    ids = {layer_id(backbone.param_position(f'stages.2.{j}.dwconv.weight'), backbone.depths, 'layer_wise')
           for j in range(6)}
    assert ids == {3, 4}


# ------------------------------------------------------------------------ num_layers, warnings, errors
def test_a_num_layers_other_than_implied_is_said_in_a_warning():
    model = upernet('base')
    with pytest.warns(UserWarning, match=r'num_layers=12 differs from the 4 that stage_wise implies .*'
                                         r'decay_rate \*\* 9'):
        ours(model, decay_rate=RATE, decay_type='stage_wise', num_layers=12)


@pytest.mark.parametrize('decay_type, num_layers', [('layer_wise', 11), ('stage_wise', 3)])
def test_num_layers_below_the_implied_is_refused(decay_type, num_layers):
    with pytest.raises(ValueError, match=f'num_layers={num_layers} is below the'):
        ours(upernet('base'), decay_rate=RATE, decay_type=decay_type, num_layers=num_layers)


# ----------------------------------------------------------------- where upstream has no answer
def _segmentor(backbone: nn.Module) -> nn.Module:
    model = nn.Module()
    model.backbone = backbone
    model.decode_head = nn.Sequential(nn.Conv2d(backbone.out_channels[-1], 4, 1), nn.BatchNorm2d(4))
    return model


@pytest.mark.parametrize('decay_type, expected', [
    # depths (2, 4, 2): stem 0, stage1 1, stage2 (the deep one) after its downsampler 2 + j // 3,
    # stage3 and its downsampler num_layers = 2 + ceil(4 / 3) = 4, head 5
    ('layer_wise', {'downsample_layers.0': 0, 'stages.0.1': 1, 'downsample_layers.1': 2, 'stages.1.0': 2,
                    'stages.1.2': 2, 'stages.1.3': 3, 'downsample_layers.2': 4, 'stages.2.1': 4, 'out_norms': 5}),
    ('stage_wise', {'downsample_layers.0': 0, 'stages.0.1': 1, 'downsample_layers.1': 0, 'stages.1.0': 2,
                    'stages.1.3': 2, 'downsample_layers.2': 0, 'stages.2.1': 3, 'out_norms': 4}),
])
def test_three_stage_ids_follow_the_number_of_stages(decay_type, expected):
    model = _segmentor(ConvNeXtV2(depths=(2, 4, 2), dims=(8, 16, 24)))
    head = max(expected.values())
    lrs = per_param(ours(model, decay_rate=RATE, decay_type=decay_type), model)
    for prefix, layer in expected.items():
        got = {lr for name, (lr, _) in lrs.items() if name.startswith(f'backbone.{prefix}.')}
        assert len(got) == 1 and math.isclose(got.pop(), BASE_LR * RATE ** (head - layer)), (prefix, got)
    assert {lr for n, (lr, _) in lrs.items() if n.startswith('decode_head.')} == {BASE_LR}


def test_grn_norms_and_biases_are_never_decayed_even_4d_grn():
    # ours exempts GRN by position; the stock rule (1-D or bias) would decay a 4-D GRN such as the official one
    model = _segmentor(ConvNeXtV2('atto', out_indices=(0,)))
    grn = model.backbone.stages[0][0].grn
    grn.gamma = nn.Parameter(torch.zeros(1, 1, 1, grn.gamma.numel()))
    lrs = per_param(ours(model, decay_rate=RATE), model)
    exempt = [n for n in lrs if '.grn.' in n or n.endswith('.bias') or '.norm.' in n or 'out_norms' in n
              or n.startswith('backbone.downsample_layers.0.1.') or n.startswith('decode_head.1.')]
    assert 'backbone.stages.0.0.grn.gamma' in exempt
    assert {n: lrs[n][1] for n in exempt} == {n: 0.0 for n in exempt}
    decayed = {n for n in lrs if n not in exempt}
    assert decayed and all(lrs[n][1] == BASE_WD for n in decayed)
    assert stock_would_decay(model, 'backbone.stages.0.0.grn.gamma')


def stock_would_decay(model: nn.Module, name: str) -> bool:
    return per_param(stock(model, decay_rate=RATE, decay_type='layer_wise', num_layers=5), model)[name][1] > 0


def test_without_paramwise_cfg_grn_and_norms_are_still_not_decayed():
    # DefaultOptimWrapperConstructor skips add_params when paramwise_cfg is empty
    model = _segmentor(ConvNeXtV2('atto', out_indices=(0,)))
    lrs = per_param(ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM)(model), model)
    assert lrs['backbone.stages.0.0.grn.gamma'][1] == 0.0 and lrs['backbone.stages.0.0.pwconv1.weight'][1] == BASE_WD


# ------------------------------------------------------------------------------ membership, freezing
@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_every_trainable_param_is_in_exactly_one_group_and_frozen_in_none(decay_type):
    model = _segmentor(ConvNeXtV2('atto', frozen_stages=1))
    grouped = [id(p) for g in ours(model, decay_rate=RATE, decay_type=decay_type).optimizer.param_groups
               for p in g['params']]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(trainable) < len(list(model.parameters()))


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize('paramwise_cfg, match', [
    (dict(decay_rate=0.9, num_layer=12), r"unknown paramwise_cfg keys \['num_layer'\]"),
    (dict(decay_rate=0.9, decay_type='foo'), 'decay_type'),
    (dict(decay_rate=0), 'decay_rate'),
    (dict(decay_rate=1.5), 'decay_rate'),
    (dict(decay_rate=0.9, num_layers=12.0), 'num_layers must be None or an integer'),
])
def test_bad_paramwise_cfg_raises_value_error(paramwise_cfg, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM, paramwise_cfg=paramwise_cfg)


def test_a_model_without_a_convnextv2_backbone_raises_type_error():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(TypeError, match='ConvNeXtV2'):
        ours(model, decay_rate=RATE)
