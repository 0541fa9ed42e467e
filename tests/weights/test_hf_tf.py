"""HF's TensorFlow weights (``tf_model.h5``), read through h5py without TensorFlow.

The test writes the file itself, in the layout HF's TF code and Keras 2 ``save_weights`` produce, from a
random model with non-zero GRN, and checks the outputs against the same weights in PyTorch.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import CheckpointError, read_checkpoint
from convnextv2_dense.weights.formats import dense_to_linear, hwio_to_oihw

h5py = pytest.importorskip('h5py')

TRUNK = ('downsample_layers.', 'stages.')


def reference_backbone(trunk_state: dict) -> ConvNeXtV2:
    model = ConvNeXtV2('atto').eval()
    model.load_state_dict({k: v for k, v in trunk_state.items() if k.startswith(TRUNK)}, strict=False)
    return model


def test_tf_kernel_layouts():
    """Keras Conv2D kernels are (kh, kw, in / groups, out), Dense kernels (in, out)."""
    kernel = torch.randn(7, 7, 1, 5)  # a depthwise Conv2D(groups=5)
    weight = hwio_to_oihw(kernel)
    assert weight.shape == (5, 1, 7, 7) and weight[3, 0, 2, 6] == kernel[2, 6, 0, 3]
    dense = torch.randn(4, 9)
    assert dense_to_linear(dense).shape == (9, 4) and dense_to_linear(dense)[7, 1] == dense[1, 7]
    with pytest.raises(ValueError, match=r'TF conv kernel .* got \(7, 7\)'):
        hwio_to_oihw(torch.randn(7, 7))


@pytest.mark.parametrize('chunked', [False, True])
@torch.no_grad()
def test_tf_classifier_h5_matches_pytorch(tmp_path, writers, atto_classifier, image, chunked):
    path = writers.keras_h5(tmp_path / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'classifier'),
                            'classifier', chunked=chunked)
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    report = model.load_report
    assert report.format == 'hf-tf' and report.arch == 'atto' and not report.new and not report.ignored
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in atto_classifier.state_dict().items())
    assert torch.equal(model(image), atto_classifier(image))


@torch.no_grad()
def test_tf_h5_agrees_with_hf_pytorch_on_the_same_weights(tmp_path, writers, atto_classifier, image):
    """The h5 loaded by us gives HF PyTorch's logits for the PyTorch copy of the same weights."""
    transformers = pytest.importorskip('transformers')
    pt_folder = writers.hf_folder(tmp_path / 'pt', writers.hf(atto_classifier.state_dict(), 'classifier'),
                                  layer_norm_eps=1e-6)
    config = json.loads((pt_folder / 'config.json').read_text())
    config.update(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320], num_labels=10)
    (pt_folder / 'config.json').write_text(json.dumps(config))
    hf = transformers.ConvNextV2ForImageClassification.from_pretrained(pt_folder).eval()
    h5 = writers.keras_h5(tmp_path / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'classifier'),
                          'classifier')
    ours = ConvNeXtV2Classifier.from_pretrained(h5).eval()
    torch.testing.assert_close(ours(image), hf(pixel_values=image).logits, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_tf_folder_without_pytorch_weights(tmp_path, writers, atto_classifier, image):
    """An HF folder holding only config.json and tf_model.h5 (TFConvNextV2Model) loads; eps comes from config."""
    folder = tmp_path / 'hf_tf'
    folder.mkdir()
    writers.keras_h5(folder / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'model'), 'model')
    (folder / 'config.json').write_text(json.dumps(writers.hf_config('atto', layer_norm_eps=1e-12)))
    backbone = ConvNeXtV2.from_pretrained(folder).eval()
    assert backbone.load_report.format == 'hf-tf'
    assert set(backbone.load_report.ignored) == {'norm.weight', 'norm.bias'}
    for got, want in zip(backbone(image), reference_backbone(atto_classifier.state_dict())(image), strict=True):
        assert torch.equal(got, want)
    with pytest.raises(CheckpointError, match=r'missing keys: head\.bias, head\.weight'):
        ConvNeXtV2Classifier.from_pretrained(folder)


@torch.no_grad()
def test_tf_sharded_folder(tmp_path, writers, atto_classifier, image):
    folder = writers.hf_tf_shards(tmp_path / 'sharded', writers.hf_tf(atto_classifier.state_dict(), 'classifier'))
    (folder / 'config.json').write_text(json.dumps(writers.hf_config('atto', layer_norm_eps=1e-6)))
    raw = read_checkpoint(folder)
    assert len(raw.files) == 2
    model = ConvNeXtV2Classifier.from_pretrained(folder).eval()
    assert model.load_report.format == 'hf-tf'
    assert torch.equal(model(image), atto_classifier(image))


def _h5(tmp_path, writers, atto_classifier, edit) -> str:
    tensors = writers.hf_tf(atto_classifier.state_dict(), 'classifier')
    edit(tensors)
    return writers.keras_h5(tmp_path / 'tf_model.h5', tensors, 'classifier')


def test_tf_missing_grn_is_refused(tmp_path, writers, atto_classifier):
    path = _h5(tmp_path, writers, atto_classifier,
               lambda t: t.pop('convnextv2/encoder/stages.2/layers.4/grn/bias:0'))
    with pytest.raises(CheckpointError, match=r'silent identity.*stages\.2\.4\.grn\.beta'):
        ConvNeXtV2Classifier.from_pretrained(path)


def test_tf_unexpected_weight_is_named(tmp_path, writers, atto_classifier):
    extra = 'convnextv2/encoder/stages.0/layers.0/layer_scale_parameter:0'  # a V1 layer scale
    path = _h5(tmp_path, writers, atto_classifier, lambda t: t.update({extra: torch.ones(40)}))
    with pytest.raises(CheckpointError, match=r'unexpected keys for the hf-tf format.*layer_scale_parameter:0'):
        ConvNeXtV2Classifier.from_pretrained(path)


def test_tf_misshaped_kernel_is_named(tmp_path, writers, atto_classifier):
    key = 'convnextv2/encoder/stages.1/layers.0/dwconv/kernel:0'
    path = _h5(tmp_path, writers, atto_classifier, lambda t: t.update({key: torch.randn(5, 5, 1, 80)}))
    with pytest.raises(CheckpointError, match=r'stages\.1\.0\.dwconv\.weight: checkpoint \(80, 1, 5, 5\), '
                                              r'model \(80, 1, 7, 7\)'):
        ConvNeXtV2Classifier.from_pretrained(path)
    key = 'convnextv2/encoder/stages.1/layers.0/pwconv1/kernel:0'
    path = _h5(tmp_path, writers, atto_classifier, lambda t: t.update({key: torch.randn(2, 80, 320)}))
    with pytest.raises(CheckpointError, match=r"pwconv1/kernel:0' \(hf-tf format\): expected a TF Dense kernel"):
        ConvNeXtV2Classifier.from_pretrained(path)


def test_h5_not_written_by_keras_is_refused(tmp_path):
    path = tmp_path / 'data.h5'
    with h5py.File(path, 'w') as f:
        f.create_dataset('x', data=[1.0, 2.0])
    with pytest.raises(CheckpointError, match=r'data\.h5 is an HDF5 file without a "layer_names" attribute'):
        read_checkpoint(path)


def test_h5_listing_an_absent_weight_is_refused(tmp_path):
    path = tmp_path / 'tf_model.h5'
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [b'convnextv2']
        group = f.create_group('convnextv2')
        group.attrs['weight_names'] = [b'm/convnextv2/layernorm/gamma:0', b'm/convnextv2/layernorm/beta:0']
        group.create_dataset('m/convnextv2/layernorm/gamma:0', data=[1.0])
    with pytest.raises(CheckpointError, match=r"'convnextv2' lists weights it does not hold: "
                                              r"m/convnextv2/layernorm/beta:0"):
        read_checkpoint(path)


def test_truncated_h5_is_refused(tmp_path, writers, atto_classifier):
    path = writers.keras_h5(tmp_path / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'model'), 'model')
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=r'tf_model\.h5 is not a readable HDF5 file'):
        read_checkpoint(path)


def test_h5_without_h5py_says_what_to_install(tmp_path, writers, atto_classifier, monkeypatch):
    path = writers.keras_h5(tmp_path / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'model'), 'model')
    monkeypatch.setitem(sys.modules, 'h5py', None)  # import h5py now raises ImportError
    with pytest.raises(CheckpointError, match=r'reading it needs h5py: pip install h5py'):
        read_checkpoint(path)
