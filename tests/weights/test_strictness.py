"""One test per loading rule: anything missing, unexpected, mis-shaped or unreadable is an error naming it."""
from __future__ import annotations

import pytest
import torch

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import CheckpointError, load_weights, save_checkpoint


def write_ours(state: dict, path) -> str:
    torch.save({'state_dict': state, 'meta': {'format': 'convnextv2_dense'}}, path)
    return str(path)


@pytest.fixture()
def state(atto_classifier) -> dict:
    return dict(atto_classifier.state_dict())


def test_missing_grn_tensor_is_refused(tmp_path, state):
    del state['stages.2.3.grn.beta']
    path = write_ours(state, tmp_path / 'no_grn.pth')
    for cls in (ConvNeXtV2, ConvNeXtV2Classifier):
        with pytest.raises(CheckpointError, match=r'silent identity.*stages\.2\.3\.grn\.beta'):
            cls.from_pretrained(path)


def test_missing_head_refused_for_classifier(tmp_path, state):
    del state['head.bias']
    with pytest.raises(CheckpointError, match=r'missing keys: head\.bias'):
        ConvNeXtV2Classifier.from_pretrained(write_ours(state, tmp_path / 'no_head.pth'))


def test_unexpected_key_is_refused(tmp_path, state):
    state['stages.0.0.gamma'] = torch.ones(40)  # a V1 layer-scale parameter
    with pytest.raises(CheckpointError, match=r'unexpected keys.*stages\.0\.0\.gamma'):
        ConvNeXtV2.from_pretrained(write_ours(state, tmp_path / 'extra.pth'))


def test_wrong_shape_names_both_shapes(tmp_path, state):
    state['stages.0.1.pwconv1.bias'] = torch.randn(159)
    with pytest.raises(CheckpointError, match=r'stages\.0\.1\.pwconv1\.bias: checkpoint \(159,\), model \(160,\)'):
        ConvNeXtV2.from_pretrained(write_ours(state, tmp_path / 'shape.pth'))


def test_num_classes_override_must_fit_the_head(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'cls.safetensors')
    with pytest.raises(CheckpointError, match=r'head\.weight: checkpoint \(10, 320\), model \(5, 320\)'):
        ConvNeXtV2Classifier.from_pretrained(path, num_classes=5)


def test_grn_of_unexpected_shape_is_refused(tmp_path, state):
    state['stages.0.0.grn.gamma'] = torch.randn(2, 80)
    with pytest.raises(CheckpointError, match=r"stages\.0\.0\.grn\.gamma.*\(2, 80\)"):
        ConvNeXtV2.from_pretrained(write_ours(state, tmp_path / 'grn.pth'))


def test_arch_override_must_agree(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'atto.safetensors')
    with pytest.raises(ValueError, match=r"arch='tiny' disagrees with the checkpoint .*atto"):
        ConvNeXtV2.from_pretrained(path, arch='tiny')
    with pytest.raises(ValueError, match='disagrees'):
        ConvNeXtV2.from_pretrained(path, depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))
    assert ConvNeXtV2.from_pretrained(path, arch='atto').arch == 'atto'


def test_load_weights_into_another_arch_is_refused(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'atto.safetensors')
    with pytest.raises(CheckpointError, match=r'holds a ConvNeXt V2-atto, but the model is a ConvNeXt V2-femto'):
        load_weights(ConvNeXtV2('femto'), path)


def test_custom_arch_is_inferred(tmp_path):
    source = ConvNeXtV2Classifier(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), num_classes=4, in_channels=1)
    path = save_checkpoint(source, tmp_path / 'custom.pth')
    model = ConvNeXtV2Classifier.from_pretrained(path)
    assert (model.depths, model.dims) == ((1, 2, 1, 1), (8, 16, 24, 32))
    assert model.num_classes == 4 and model.downsample_layers[0][0].in_channels == 1
    assert 'custom' in model.load_report.arch


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_file_names_the_file(tmp_path, atto_classifier, suffix):
    path = save_checkpoint(atto_classifier, tmp_path / f'cut{suffix}')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f'cut{suffix}'):
        ConvNeXtV2.from_pretrained(path)


@pytest.mark.parametrize('content', [b'not a checkpoint, just some text\n' * 3, b''])
def test_non_checkpoint_file_names_the_file(tmp_path, content):
    path = tmp_path / 'notes.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match='notes.pth'):
        ConvNeXtV2.from_pretrained(path)


def test_unknown_layout_names_the_formats_tried(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.randn(4, 3, 7, 7), 'fc.weight': torch.randn(2, 4)}, path)
    with pytest.raises(CheckpointError, match=r'resnet\.pth.*official, convnextv2_dense.*conv1\.weight'):
        ConvNeXtV2.from_pretrained(path)


def test_non_tensor_entries_in_state_dict_are_refused(tmp_path, state):
    state['stages.0.0.dwconv.extra'] = 'text'
    with pytest.raises(CheckpointError, match=r'not tensors: stages\.0\.0\.dwconv\.extra'):
        ConvNeXtV2.from_pretrained(write_ours(state, tmp_path / 'mixed.pth'))


def test_missing_path():
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        ConvNeXtV2.from_pretrained('/nowhere/nowhere.pth')
