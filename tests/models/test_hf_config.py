"""Every ConvNextV2Config knob: parity with HF transformers on non-default configs, ``from_hf_config``, and
named errors for what cannot be honoured.

Parity goes through the real route (HF model -> ``save_pretrained`` -> our ``from_pretrained``) with random
non-zero weights everywhere, GRN included.
"""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip('transformers')
from transformers import (ConvNextV2Backbone, ConvNextV2Config, ConvNextV2ForImageClassification,  # noqa: E402
                          ConvNextV2Model)
from transformers.activations import ACT2FN  # noqa: E402

from convnextv2_dense.models import ACTIVATIONS, ConvNeXtV2, ConvNeXtV2Classifier  # noqa: E402
from convnextv2_dense.weights import CheckpointError  # noqa: E402

RTOL = 1e-4
SMALL = dict(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32])
VARIANTS = {
    '3-stages': dict(depths=[1, 2, 1], hidden_sizes=[8, 16, 24], num_stages=3),
    '5-stages': dict(depths=[1, 1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16, 24], num_stages=5),
    'patch-2': dict(SMALL, patch_size=2),
    'relu': dict(SMALL, hidden_act='relu'),
    'gelu_new': dict(SMALL, hidden_act='gelu_new'),
    'quick_gelu': dict(SMALL, hidden_act='quick_gelu'),
    'gray': dict(SMALL, num_channels=1),
    '5-channels': dict(SMALL, num_channels=5),
    'eps-1e-3': dict(SMALL, layer_norm_eps=1e-3),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def image(config: ConvNextV2Config, seed: int = 0) -> torch.Tensor:
    # odd sizes, large enough for five stages (total stride 64)
    return torch.randn(2, config.num_channels, 133, 150, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert error < RTOL, f'{what}: relative error {error:.2e}'


# --------------------------------------------------------------------------------- activations
@pytest.mark.parametrize('name', [n for n in ACTIVATIONS if n != 'selu'])
def test_each_activation_is_hf_s(name):
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(ACTIVATIONS[name]()(x), ACT2FN[name](x), rtol=1e-5, atol=1e-6)


def test_selu_which_hf_documents_but_cannot_build():
    with pytest.raises(KeyError):  # if HF adds it, the test above should cover it instead
        ACT2FN['selu']
    x = torch.linspace(-6, 6, 1001)
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    torch.testing.assert_close(ACTIVATIONS['selu']()(x), scale * torch.where(x > 0, x, alpha * (torch.exp(x) - 1)))


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize('variant', list(VARIANTS))
@torch.no_grad()
def test_backbone_feature_maps_match_hf(variant, tmp_path):
    config = ConvNextV2Config(**VARIANTS[variant])
    names = config.stage_names
    hf = randomize(ConvNextV2Backbone(ConvNextV2Config(**VARIANTS[variant], out_features=names)), 0)
    hf.save_pretrained(tmp_path)
    ours = ConvNeXtV2.from_pretrained(tmp_path, out_features=names).eval()
    assert not ours.load_report.new and ours.stage_names == tuple(names)
    x = image(config)
    features = ours(x)
    for name, mine, theirs in zip(names, features, hf(pixel_values=x).feature_maps, strict=True):
        assert_close(mine, theirs, f'{variant} {name}')
    assert [f.shape[1] for f in features] == list(ours.out_channels)
    assert [f.shape[-1] for f in features] == [x.shape[-1] // stride for stride in ours.strides]


@pytest.mark.parametrize('variant', list(VARIANTS))
@torch.no_grad()
def test_model_outputs_and_classifier_logits_match_hf(variant, tmp_path):
    config = ConvNextV2Config(**VARIANTS[variant], num_labels=5)
    hf = randomize(ConvNextV2ForImageClassification(config), 1)
    hf.save_pretrained(tmp_path)
    ours = ConvNeXtV2Classifier.from_pretrained(tmp_path).eval()
    assert ours.norm.eps == config.layer_norm_eps and ours.act == config.hidden_act
    x = image(config, seed=1)
    assert_close(ours(x), hf(pixel_values=x).logits, f'{variant} logits')
    theirs = hf.convnextv2(pixel_values=x, output_hidden_states=True)  # ConvNextV2Model's outputs
    assert isinstance(hf.convnextv2, ConvNextV2Model)
    assert_close(ours.forward_features(x), theirs.pooler_output, f'{variant} pooled')
    for (name, mine), hidden in zip(ours.iter_stages(x), theirs.hidden_states, strict=True):
        assert_close(mine, hidden, f'{variant} hidden state {name}')


# ------------------------------------------------------------------------------- from_hf_config
def _check_same_structure(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    from convnextv2_dense.weights import to_canonical
    theirs = to_canonical(hf.state_dict(), 'hf').state_dict
    mine = ours.state_dict()
    assert set(mine) <= set(theirs)  # HF builds every stage; ours stops at the last one it returns
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(theirs[k].shape) for k in mine}
    ours.load_state_dict({k: theirs[k] for k in mine})


@pytest.mark.parametrize('form', ['object', 'dict', 'file', 'folder'])
@torch.no_grad()
def test_from_hf_config_builds_the_equivalent_classifier(form, tmp_path):
    config = ConvNextV2Config(depths=[1, 2, 1], hidden_sizes=[8, 16, 24], num_stages=3, patch_size=2,
                              hidden_act='gelu_new', num_channels=5, layer_norm_eps=1e-4, num_labels=3)
    config.save_pretrained(tmp_path)
    given = {'object': config, 'dict': config.to_dict(), 'file': tmp_path / 'config.json', 'folder': tmp_path}[form]
    ours = ConvNeXtV2Classifier.from_hf_config(given)
    assert (ours.depths, ours.dims, ours.patch_size, ours.in_channels, ours.act, ours.num_classes, ours.norm.eps) == \
        ((1, 2, 1), (8, 16, 24), 2, 5, 'gelu_new', 3, 1e-4)
    hf = randomize(ConvNextV2ForImageClassification(config), 2)
    _check_same_structure(ours, hf)
    x = image(config)
    assert_close(ours.eval()(x), hf(pixel_values=x).logits, f'{form} logits')


@pytest.mark.parametrize('hf_selection, names, mm_indices', [
    (dict(out_indices=[0, 2]), ('stem', 'stage2'), (None, 1)),
    (dict(out_indices=[-1]), ('stage3',), (2,)),
    (dict(out_features=['stage1', 'stage3']), ('stage1', 'stage3'), (0, 2)),
    (dict(), ('stage3',), (2,)),  # HF's default: the last stage
])
@torch.no_grad()
def test_from_hf_config_translates_hf_out_indices(hf_selection, names, mm_indices):
    config = ConvNextV2Config(depths=[1, 1, 1], hidden_sizes=[8, 16, 24], num_stages=3, **hf_selection)
    ours = ConvNeXtV2.from_hf_config(config)
    assert ours.out_features == names and ours.out_indices == mm_indices
    hf = randomize(ConvNextV2Backbone(config), 3)
    _check_same_structure(ours, hf)
    x = image(config)
    for mine, theirs in zip(ours.eval()(x), hf(pixel_values=x).feature_maps, strict=True):
        assert_close(mine, theirs, str(hf_selection))


def test_overrides_replace_the_config_selection_and_image_size_is_ignored():
    config = ConvNextV2Config(**SMALL, out_indices=[0], image_size=32)
    ours = ConvNeXtV2.from_hf_config(config, out_indices=(0, 3))
    assert ours.out_features == ('stage1', 'stage4')
    assert [o.shape[-1] for o in ours(torch.randn(1, 3, 96, 96))] == [24, 3]  # any input size, like HF


@pytest.mark.parametrize('std', [0.02, 0.1])
def test_initializer_range_sets_the_init_statistics(std):
    model = ConvNeXtV2Classifier.from_hf_config(ConvNextV2Config(depths=[1, 1, 1, 1], hidden_sizes=[64, 64, 64, 64],
                                                                 initializer_range=std, num_labels=64))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weights = torch.cat([m.weight.flatten() for m in layers])
    assert weights.numel() > 50_000
    assert abs(weights.std().item() / std - 1) < 0.03 and abs(weights.mean().item()) < std * 0.02
    assert not any(m.bias.any() for m in layers) and not model.stages[0][0].grn.gamma.any()


# ------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize('fields, match', [
    (dict(hidden_act='gelu_10'), "hidden_act='gelu_10' cannot be honoured; expected one of gelu, .*gelu_new"),
    (dict(hidden_act='prelu'), "hidden_act='prelu' cannot be honoured"),
    (dict(num_stages=3), 'num_stages=3, depths=\\[3, 3, 9, 3\\] and hidden_sizes=.* same number of stages'),
    (dict(depths=[1, 0, 1, 1]), 'depths=\\[1, 0, 1, 1\\] cannot be honoured'),
    (dict(patch_size=0), 'patch_size=0 cannot be honoured'),
    (dict(num_channels=2.5), 'num_channels=2.5 cannot be honoured'),
    (dict(model_type='convnext'), "model_type='convnext' is not a ConvNeXt V2 config"),
    (dict(out_indices=[0], out_features=['stage1']), 'name different stages'),
    (dict(out_indices=[5]), 'HF out_indices must be integers in \\[-5, 4\\]'),
])
def test_fields_we_cannot_honour_are_named_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtV2.from_hf_config({'model_type': 'convnextv2', **fields})


def test_loading_an_hf_folder_with_an_unsupported_field_names_config_json(tmp_path):
    ConvNextV2Model(ConvNextV2Config(**SMALL)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps({**config, 'hidden_act': 'gelu_10'}))
    with pytest.raises(CheckpointError, match=r"config\.json: hidden_act='gelu_10' cannot be honoured"):
        ConvNeXtV2.from_pretrained(tmp_path)


def test_loading_an_hf_folder_whose_config_disagrees_with_its_tensors(tmp_path):
    ConvNextV2Model(ConvNextV2Config(**SMALL)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps({**config, 'depths': [1, 1, 3, 1]}))
    with pytest.raises(CheckpointError, match=r'stage 2 \(0-based\) holds 2 blocks .*config\.json declares'):
        ConvNeXtV2.from_pretrained(tmp_path)


def test_loading_into_a_model_of_another_activation_is_refused(tmp_path):
    ConvNextV2Model(ConvNextV2Config(**SMALL, hidden_act='relu')).save_pretrained(tmp_path)
    from convnextv2_dense.weights import load_weights
    model = ConvNeXtV2(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    with pytest.raises(CheckpointError, match="made with act='relu'"):
        load_weights(model, tmp_path)
    assert ConvNeXtV2.from_pretrained(tmp_path).act == 'relu'
