"""``ConvNeXtV2LayerDecayOptimizerConstructor``, and the stock mmdet / mmseg constructor on our backbone.

Every parameter's expected lr and weight decay are computed here from the documented rule, written
out independently of :mod:`convnextv2_dense.mm.layer_decay`:

- ``layer_wise``: stem (``downsample_layers.0``) 0, stage1 blocks 1, ``downsample_layers.1`` and stage2
  2, ``downsample_layers.2`` 3, stage3 block j ``3 + j // 3``, ``downsample_layers.3`` and stage4
  ``L = 3 + ceil(depth3 / 3)``, the output norms and everything outside the backbone ``L + 1``;
  lr scale ``rate ** (L + 1 - id)``.
- ``stage_wise``: stem 0, stage i (0-based; its ``downsample_layers[i]`` for i >= 1 and ``stages[i]``)
  ``i + 1``, the rest 5; lr scale ``rate ** (5 - id)``.
- weight decay: conv and linear weights get the base value, everything else (biases, LayerNorm and
  BatchNorm weights, GRN gamma / beta) 0.
"""
from __future__ import annotations

import math

import pytest
from torch import nn

from convnextv2_dense import ARCHS, ConvNeXtV2
from convnextv2_dense.mm.optimizer import ConvNeXtV2LayerDecayOptimizerConstructor

BASE_LR, BASE_WD, RATE = 1e-3, 0.05, 0.9
OPTIM = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))


class FakeHead(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)


class Segmentor(nn.Module):
    """What the constructor sees of an mm model: ``.backbone`` plus heads."""

    def __init__(self, arch: str, **backbone_kwargs) -> None:
        super().__init__()
        self.backbone = ConvNeXtV2(arch, **backbone_kwargs)
        self.decode_head = FakeHead(self.backbone.out_channels[-1])


_MODELS: dict[str, Segmentor] = {}


def segmentor(arch: str) -> Segmentor:
    """One model per arch for the whole module (base takes a second to build)."""
    if arch not in _MODELS:
        _MODELS[arch] = Segmentor(arch)
    return _MODELS[arch]


def build(model: nn.Module, **paramwise_cfg):
    return ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM, paramwise_cfg=paramwise_cfg)(model)


def groups_by_param(optim_wrapper) -> dict[int, dict]:
    return {id(p): group for group in optim_wrapper.optimizer.param_groups for p in group['params']}


# ------------------------------------------------------------------ the documented rule, written out
def expected_layer_id(name: str, depths: tuple[int, ...], decay_type: str) -> int:
    parts = name.split('.')
    in_backbone = parts[0] == 'backbone'
    kind = parts[1] if in_backbone else None
    if decay_type == 'layer_wise':
        last = 3 + math.ceil(depths[2] / 3)
        if kind == 'downsample_layers':
            return {0: 0, 1: 2, 2: 3, 3: last}[int(parts[2])]
        if kind == 'stages':
            stage, block = int(parts[2]), int(parts[3])
            return {0: 1, 1: 2, 2: 3 + block // 3, 3: last}[stage]
        return last + 1
    if kind == 'downsample_layers':
        return 0 if int(parts[2]) == 0 else int(parts[2]) + 1
    if kind == 'stages':
        return int(parts[2]) + 1
    return 5


def expected_scale(name: str, depths: tuple[int, ...], decay_type: str) -> float:
    head = 3 + math.ceil(depths[2] / 3) + 1 if decay_type == 'layer_wise' else 5
    return RATE ** (head - expected_layer_id(name, depths, decay_type))


def expected_weight_decays(model: nn.Module) -> dict[str, float]:
    """By module type: conv / linear weights are decayed, nothing else."""
    out = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            decayed = isinstance(module, (nn.Conv2d, nn.Linear)) and param_name == 'weight'
            out[f'{module_name}.{param_name}'] = BASE_WD if decayed else 0.0
    return out


def test_rule_gives_base_twelve_layers_and_atto_five():
    # the numbers the brief's rule gives (L), so that the expectation above cannot drift silently
    assert 3 + math.ceil(ARCHS['base'].depths[2] / 3) == 12
    assert 3 + math.ceil(ARCHS['atto'].depths[2] / 3) == 5


# ------------------------------------------------------------------------------------ lr per param
@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
@pytest.mark.parametrize('arch', ['atto', 'base'])
def test_every_param_gets_the_documented_lr(arch, decay_type):
    model = segmentor(arch)
    groups = groups_by_param(build(model, decay_rate=RATE, decay_type=decay_type))
    wrong = {}
    for name, param in model.named_parameters():
        want = BASE_LR * expected_scale(name, ARCHS[arch].depths, decay_type)
        got = groups[id(param)]['lr']
        if not math.isclose(got, want, rel_tol=1e-9):
            wrong[name] = (got, want)
    assert not wrong, wrong


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
@pytest.mark.parametrize('arch', ['atto', 'base'])
def test_every_param_gets_the_documented_weight_decay(arch, decay_type):
    model = segmentor(arch)
    groups = groups_by_param(build(model, decay_rate=RATE, decay_type=decay_type))
    expected = expected_weight_decays(model)
    got = {name: groups[id(p)]['weight_decay'] for name, p in model.named_parameters()}
    assert got == expected


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_stem_has_the_lowest_lr_of_all(decay_type):
    model = segmentor('base')
    groups = groups_by_param(build(model, decay_rate=RATE, decay_type=decay_type))
    stem = {groups[id(p)]['lr'] for n, p in model.named_parameters() if n.startswith('backbone.downsample_layers.0.')}
    rest = {groups[id(p)]['lr'] for n, p in model.named_parameters()
            if not n.startswith('backbone.downsample_layers.0.')}
    assert len(stem) == 1 and max(stem) < min(rest)


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_head_and_output_norms_get_exactly_the_base_lr(decay_type):
    model = segmentor('base')
    groups = groups_by_param(build(model, decay_rate=RATE, decay_type=decay_type))
    heads = [(n, groups[id(p)]) for n, p in model.named_parameters()
             if n.startswith(('decode_head.', 'backbone.out_norms.'))]
    assert heads and all(g['lr'] == BASE_LR and g.get('lr_scale', 1.0) == 1.0 for _, g in heads)


def test_grn_norms_and_biases_are_not_decayed():
    model = segmentor('atto')
    groups = groups_by_param(build(model, decay_rate=RATE))
    exempt = [n for n, p in model.named_parameters()
              if '.grn.' in n or n.endswith('.bias') or '.norm.' in n or 'out_norms' in n or '.bn.' in n]
    params = dict(model.named_parameters())
    assert any('.grn.gamma' in n for n in exempt)
    assert {n: groups[id(params[n])]['weight_decay'] for n in exempt} == {n: 0.0 for n in exempt}


def test_conv_and_linear_weights_are_decayed():
    model = segmentor('atto')
    groups = groups_by_param(build(model, decay_rate=RATE))
    names = ['backbone.downsample_layers.0.0.weight', 'backbone.stages.2.5.dwconv.weight',
             'backbone.stages.3.1.pwconv1.weight', 'backbone.stages.0.0.pwconv2.weight',
             'decode_head.conv.weight', 'decode_head.fc.weight']
    params = dict(model.named_parameters())
    assert {n: groups[id(params[n])]['weight_decay'] for n in names} == {n: BASE_WD for n in names}


def test_without_paramwise_cfg_grn_and_norms_are_still_not_decayed():
    # DefaultOptimWrapperConstructor skips add_params when paramwise_cfg is empty; the design says
    # GRN, norms and biases are *never* decayed, so an empty paramwise_cfg must not change that.
    model = segmentor('atto')
    optim_wrapper = ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM)(model)
    groups = groups_by_param(optim_wrapper)
    gamma = model.backbone.stages[0][0].grn.gamma
    assert groups[id(gamma)]['weight_decay'] == 0.0


# ------------------------------------------------------------------------------ membership, freezing
def test_frozen_params_are_in_no_group():
    model = Segmentor('atto', frozen_stages=1)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen  # stem, stage1 and its output norm
    grouped = {id(p) for g in build(model, decay_rate=RATE).optimizer.param_groups for p in g['params']}
    assert not frozen & grouped


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_every_trainable_param_is_in_exactly_one_group(decay_type):
    model = Segmentor('atto', frozen_stages=1)
    grouped = [id(p) for g in build(model, decay_rate=RATE, decay_type=decay_type).optimizer.param_groups
               for p in g['params']]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize('paramwise_cfg, match', [
    (dict(decay_rate=0.9, num_layers=12), 'unknown paramwise_cfg keys'),
    (dict(decay_rate=0.9, decay_type='foo'), 'decay_type'),
    (dict(decay_rate=0), 'decay_rate'),
    (dict(decay_rate=1.5), 'decay_rate'),
])
def test_bad_paramwise_cfg_raises_value_error(paramwise_cfg, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtV2LayerDecayOptimizerConstructor(OPTIM, paramwise_cfg=paramwise_cfg)


def test_a_model_without_a_convnextv2_backbone_raises_type_error():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    model.decode_head = FakeHead(8)
    with pytest.raises(TypeError, match='ConvNeXtV2'):
        build(model, decay_rate=RATE)


# --------------------------------------------------------------------- the stock mmdet / mmseg ones
def test_stock_constructors_recognise_our_backbone_by_class_name():
    # both stock constructors branch on `'ConvNeXt' in module.backbone.__class__.__name__`
    pytest.importorskip('mmseg')
    import inspect

    from mmdet.engine.optimizers import layer_decay_optimizer_constructor as mmdet_ldoc
    from mmseg.engine.optimizers import layer_decay_optimizer_constructor as mmseg_ldoc
    for module in (mmdet_ldoc, mmseg_ldoc):
        assert "'ConvNeXt' in module.backbone.__class__.__name__" in inspect.getsource(module)
    assert 'ConvNeXt' in type(segmentor('atto').backbone).__name__


@pytest.mark.parametrize('package', ['mmseg', 'mmdet'])
def test_stock_constructor_decays_the_stem_below_the_head(package):
    optimizers = pytest.importorskip(f'{package}.engine.optimizers')
    model = segmentor('base')
    stock = optimizers.LearningRateDecayOptimizerConstructor(
        OPTIM, paramwise_cfg=dict(decay_rate=RATE, decay_type='layer_wise', num_layers=12))(model)
    groups = groups_by_param(stock)
    stem = groups[id(model.backbone.downsample_layers[0][0].weight)]['lr']
    head = groups[id(model.decode_head.conv.weight)]['lr']
    assert stem < head


@pytest.mark.parametrize('package', ['mmseg', 'mmdet'])
def test_stock_constructor_agrees_with_ours_on_base(package):
    # with num_layers=12 the stock ConvNeXt layer ids are exactly ours for base (whose L is 12)
    optimizers = pytest.importorskip(f'{package}.engine.optimizers')
    model = segmentor('base')
    stock = groups_by_param(optimizers.LearningRateDecayOptimizerConstructor(
        OPTIM, paramwise_cfg=dict(decay_rate=RATE, decay_type='layer_wise', num_layers=12))(model))
    ours = groups_by_param(build(model, decay_rate=RATE, decay_type='layer_wise'))
    differ = {n: (stock[id(p)]['lr'], ours[id(p)]['lr']) for n, p in model.named_parameters()
              if not math.isclose(stock[id(p)]['lr'], ours[id(p)]['lr'], rel_tol=1e-9)}
    assert not differ, differ
