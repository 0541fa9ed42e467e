"""The model speaks for itself: one parser of parameter names, the load policy each class declares, and
parameter names that stay those of the official release."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from convnextv2_dense.models import (ARCHS, ConvNeXtV2, ConvNeXtV2Classifier, LoadPolicy, ParamPosition,
                                     parse_param_name)

PACKAGE = Path(__file__).resolve().parents[2] / 'convnextv2_dense'


def official_keys(depths: tuple[int, ...], classifier: bool) -> set[str]:
    """The official release's key layout, written out from its description (REFERENCE.md's crosswalk)."""
    keys = {f'downsample_layers.0.{i}.{p}' for i in (0, 1) for p in ('weight', 'bias')}
    keys |= {f'downsample_layers.{s}.{i}.{p}' for s in range(1, len(depths)) for i in (0, 1)
             for p in ('weight', 'bias')}
    for s, depth in enumerate(depths):
        for b in range(depth):
            keys |= {f'stages.{s}.{b}.{layer}.{p}' for layer in ('dwconv', 'norm', 'pwconv1', 'pwconv2')
                     for p in ('weight', 'bias')}
            keys |= {f'stages.{s}.{b}.grn.gamma', f'stages.{s}.{b}.grn.beta'}
    if classifier:
        keys |= {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    return keys


@pytest.mark.parametrize('arch', ['atto', 'nano', 'tiny', 'base'])
def test_released_archs_keep_the_official_parameter_names(arch):
    depths = ARCHS[arch].depths
    assert set(ConvNeXtV2Classifier(arch, num_classes=3).state_dict()) == official_keys(depths, classifier=True)
    backbone = set(ConvNeXtV2(arch).state_dict())
    norms = {f'out_norms.stage{i}.{p}' for i in range(1, 5) for p in ('weight', 'bias')}
    assert backbone == official_keys(depths, classifier=False) | norms


@pytest.mark.parametrize('name, position', [
    ('downsample_layers.0.0.weight', ParamPosition('stem', part='conv')),
    ('downsample_layers.0.1.bias', ParamPosition('stem', part='norm')),
    ('downsample_layers.2.0.weight', ParamPosition('downsample', stage=2, part='norm')),
    ('downsample_layers.3.1.weight', ParamPosition('downsample', stage=3, part='conv')),
    ('stages.2.17.grn.gamma', ParamPosition('block', stage=2, block=17, part='grn')),
    ('stages.0.0.pwconv1.weight', ParamPosition('block', stage=0, block=0, part='pwconv1')),
    ('stages.5.1.dwconv.bias', ParamPosition('block', stage=5, block=1, part='dwconv')),
    ('out_norms.stem.weight', ParamPosition('out_norm')),
    ('out_norms.stage3.bias', ParamPosition('out_norm', stage=2)),
    ('out_norms.stage12.bias', ParamPosition('out_norm', stage=11)),
    ('norm.weight', ParamPosition('head_norm')),
    ('head.bias', ParamPosition('head')),
])
def test_parser_positions(name, position):
    assert parse_param_name(name) == position


@pytest.mark.parametrize('name', ['backbone.stages.0.0.dwconv.weight', 'stages.0.0.conv_dw.weight',
                                  'downsample_layers.1.2.weight', 'stages.x.0.norm.weight', 'stages.01.0.norm.weight',
                                  'out_norms.stage0.weight', 'out_norms.layer1.weight', 'head.fc.weight', 'cls_token',
                                  'encoder.stages.0.layers.0.dwconv.weight'])
def test_parser_refuses_what_is_not_ours(name):
    assert parse_param_name(name) is None


@pytest.mark.parametrize('model', [ConvNeXtV2('atto', out_features=['stem', 'stage1', 'stage2', 'stage3', 'stage4']),
                                   ConvNeXtV2Classifier(depths=(1, 2, 1), dims=(8, 16, 24), num_classes=2)],
                         ids=['backbone', 'classifier-3-stages'])
def test_every_parameter_of_our_models_parses_and_its_module_agrees(model):
    modules = dict(model.named_modules())
    for name, _ in model.named_parameters():
        position = model.param_position(name)
        assert position is not None, name
        module_name = name.rsplit('.', 1)[0]
        if position.kind == 'block':
            assert modules[module_name] is getattr(model.stages[position.stage][position.block], position.part)
        elif position.kind == 'downsample':
            assert module_name.startswith(f'downsample_layers.{position.stage}.')


def test_backbone_declares_fresh_output_norms_and_an_unused_head():
    policy = ConvNeXtV2('atto', out_indices=(0, 1)).load_policy()
    assert policy.allows_missing('out_norms.stage2.weight')
    assert not policy.allows_missing('stages.0.0.grn.gamma')  # a zero GRN would be a silent identity
    assert policy.allows_unused('head.weight') and policy.allows_unused('norm.bias')
    assert policy.allows_unused('stages.2.0.dwconv.weight') and policy.allows_unused('downsample_layers.3.1.bias')
    assert policy.is_skipped_stage('stages.3.1.grn.beta') and not policy.is_skipped_stage('stages.1.1.grn.beta')
    assert not policy.allows_unused('stages.1.0.dwconv.weight')  # a built stage is never optional
    assert not policy.allows_unused('decoder.proj.weight')


def test_classifier_needs_everything_and_ignores_only_output_norms():
    policy = ConvNeXtV2Classifier('atto').load_policy()
    assert not policy.allows_missing('head.weight') and not policy.allows_missing('norm.weight')
    assert policy.allows_unused('out_norms.stage1.weight')
    assert not policy.allows_unused('stages.3.0.dwconv.weight')


def test_load_policy_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="unknown position kinds \\['heads'\\]"):
        LoadPolicy(may_be_unused=frozenset({'heads'}))


def _relative_imports(path: Path) -> list[tuple[int, str | None, bool]]:
    tree = ast.parse(path.read_text())
    module_level = {id(node) for node in tree.body}
    return [(node.level, node.module, id(node) in module_level) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level]


def test_models_import_no_other_room_at_module_level():
    # from_pretrained / init_weights reach the weights package when called: the only way up. The one
    # module-level exception is `compat` (torch version shims), a leaf that imports nothing of the package.
    for path in (PACKAGE / 'models').glob('*.py'):
        for level, module, at_module_level in _relative_imports(path):
            if level == 2 and module == 'compat':
                continue
            assert level == 1 or not at_module_level, (path.name, module)
            assert level == 1 or module == 'weights', (path.name, module)
    assert not [m for _, m, _ in _relative_imports(PACKAGE / 'compat.py')], 'compat must stay a leaf'


def test_weights_and_mm_do_not_import_model_classes_to_decide():
    readers = [*(PACKAGE / 'weights').glob('*.py'), PACKAGE / 'mm' / 'layer_decay.py', PACKAGE / 'mm' / 'optimizer.py']
    for path in readers:
        for _, module, _ in _relative_imports(path):
            assert module not in ('models.backbone', 'models.classifier', 'models.trunk'), (path.name, module)
