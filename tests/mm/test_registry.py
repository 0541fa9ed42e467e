"""Registration in mmdet / mmseg (lazy, post-import) and ``init_cfg`` through the registries, strict."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnextv2_dense import ConvNeXtV2
from convnextv2_dense.mm.optimizer import ConvNeXtV2LayerDecayOptimizerConstructor
from convnextv2_dense.weights import CheckpointError, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
MM_ROOTS = ('mmdet', 'mmseg', 'mmengine', 'mmcv', 'mmpretrain')
SCOPES = ['mmdet', 'mmseg']


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (module caches and registries start empty)."""
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def registry(scope: str):
    return pytest.importorskip(f'{scope}.registry')


def build(scope: str, cfg: dict):
    """Build through a package's MODELS with that package as the default scope (as its runner does)."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        return registry(scope).MODELS.build(cfg)


def atto_segmentor(checkpoint: str):
    """A small mmseg EncoderDecoder whose backbone loads ``checkpoint`` in ``init_weights()``."""
    return build('mmseg', dict(
        type='EncoderDecoder',
        backbone=dict(type='ConvNeXtV2', arch='atto', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
        decode_head=dict(type='FCNHead', in_channels=320, in_index=3, channels=8, num_convs=1,
                         num_classes=3, loss_decode=dict(type='CrossEntropyLoss'))))


@pytest.fixture(scope='module')
def atto_checkpoint(tmp_path_factory, randomize):
    model = randomize(ConvNeXtV2('atto'))  # non-zero everywhere, so a load that did nothing cannot pass
    path = save_checkpoint(model, tmp_path_factory.mktemp('ckpt') / 'atto.pth')
    return str(path), model.state_dict()


# ---------------------------------------------------------------------------------------- imports
def test_import_alone_pulls_in_no_mm_package():
    code = ('import sys, convnextv2_dense; '
            f'print(sorted(m for m in sys.modules if m.split(".")[0] in {MM_ROOTS!r}))')
    assert run_python(code) == '[]'


def test_registers_with_mm_imported_before_and_after_the_package():
    # mmdet first: registered at once; mmseg after: registered by the post-import hook
    code = ('import mmdet.registry as d; import convnextv2_dense; import mmseg.registry as s; '
            'from convnextv2_dense import ConvNeXtV2 as C; '
            'print(d.MODELS.get("ConvNeXtV2") is C, s.MODELS.get("ConvNeXtV2") is C)')
    assert run_python(code) == 'True True'


# ------------------------------------------------------------------------------------------ build
@pytest.mark.parametrize('scope', SCOPES)
def test_package_registry_builds_our_class(scope):
    model = build(scope, dict(type='ConvNeXtV2', arch='atto'))
    assert type(model) is ConvNeXtV2 and model.arch == 'atto'


@pytest.mark.parametrize('scope', SCOPES)
def test_root_registry_finds_it_under_the_default_scope(scope):
    registry(scope)
    from mmengine.registry import MODELS, DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(dict(type='ConvNeXtV2', arch='atto', out_indices=(1, 3)))
    assert type(model) is ConvNeXtV2 and model.out_indices == (1, 3)


@pytest.mark.parametrize('scope', SCOPES)
def test_root_registry_finds_it_after_init_default_scope(scope):
    registry(scope)
    from mmengine.registry import MODELS, DefaultScope, init_default_scope
    saved = DefaultScope.get_current_instance()
    try:
        init_default_scope(scope)
        model = MODELS.build(dict(type='ConvNeXtV2', arch='femto'))
    finally:
        if saved is not None:
            init_default_scope(saved.scope_name)
    assert type(model) is ConvNeXtV2 and model.arch == 'femto'


@pytest.mark.parametrize('scope', SCOPES)
def test_constructor_is_registered(scope):
    found = registry(scope).OPTIM_WRAPPER_CONSTRUCTORS.get('ConvNeXtV2LayerDecayOptimizerConstructor')
    assert found is ConvNeXtV2LayerDecayOptimizerConstructor


@pytest.mark.parametrize('scope', SCOPES)
def test_name_survives_all_upstream_modules_and_collides_with_none(scope):
    # importing every upstream module would raise on a clash with our (force-)registered name, or
    # replace ours; and no upstream model name is a spelling of ours
    utils = pytest.importorskip(f'{scope}.utils')
    utils.register_all_modules(init_default_scope=False)
    models = registry(scope).MODELS
    assert models.get('ConvNeXtV2') is ConvNeXtV2
    clashes = [k for k in models.module_dict if k.lower().replace('_', '') == 'convnextv2' and k != 'ConvNeXtV2']
    assert clashes == []


def test_mmpretrain_registry_builds_our_class_when_installed():
    mmpretrain_registry = pytest.importorskip('mmpretrain.registry')
    model = mmpretrain_registry.MODELS.build(dict(type='ConvNeXtV2', arch='atto'))
    assert type(model) is ConvNeXtV2


# ------------------------------------------------------------------------------ init_cfg, strictly
def test_pretrained_init_cfg_through_mmdet_loads_the_checkpoint(atto_checkpoint):
    path, state = atto_checkpoint
    model = build('mmdet', dict(
        type='ConvNeXtV2', arch='atto', init_cfg=dict(type='Pretrained', checkpoint=path)))
    model.init_weights()
    differ = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert differ == []


def test_pretrained_init_cfg_inside_an_mmseg_segmentor_loads_the_checkpoint(atto_checkpoint):
    # the runner's route: the segmentor's mmengine init_weights() calls the backbone's
    path, state = atto_checkpoint
    seg = atto_segmentor(path)
    seg.init_weights()
    gamma = 'stages.2.5.grn.gamma'
    assert torch.equal(seg.backbone.state_dict()[gamma], state[gamma])


def test_pretrained_checkpoint_of_another_arch_raises(atto_checkpoint):
    path, _ = atto_checkpoint
    model = build('mmdet', dict(
        type='ConvNeXtV2', arch='femto', init_cfg=dict(type='Pretrained', checkpoint=path)))
    with pytest.raises(CheckpointError, match='atto'):
        model.init_weights()


def test_pretrained_checkpoint_missing_a_grn_tensor_raises(tmp_path, atto_checkpoint):
    ckpt = torch.load(atto_checkpoint[0], weights_only=True)
    del ckpt['state_dict']['stages.1.0.grn.beta']  # a GRN left at zero would be a silent identity
    path = tmp_path / 'no_grn.pth'
    torch.save(ckpt, path)
    model = build('mmdet', dict(
        type='ConvNeXtV2', arch='atto', init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    with pytest.raises(CheckpointError, match=r'stages\.1\.0\.grn\.beta'):
        model.init_weights()


def test_pretrained_garbage_file_raises_inside_a_segmentor(tmp_path):
    path = tmp_path / 'garbage.pth'
    path.write_bytes(b'not a checkpoint')
    seg = atto_segmentor(str(path))
    with pytest.raises(CheckpointError, match='garbage.pth'):
        seg.init_weights()
