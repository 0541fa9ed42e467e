"""Every supported layout, written to a real file by the test, loads back exactly through from_pretrained."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from convnextv2_dense.models import STAGE_NAMES, ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import (FORMAT_NAMES, CheckpointError, detect_format, save_checkpoint,
                                      to_canonical)
from convnextv2_dense.weights.formats import sparse_dense_kernel, sparse_depthwise_kernel

ALL_STAGES = list(STAGE_NAMES)
TRUNK = ('downsample_layers.', 'stages.')


def assert_state_equal(model: torch.nn.Module, expected: dict, keys=None) -> None:
    state = model.state_dict()
    for key in keys if keys is not None else expected:
        assert torch.equal(state[key], expected[key]), key


def assert_fresh_out_norms(model: ConvNeXtV2) -> None:
    for name, norm in model.out_norms.items():
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), name


def reference_backbone(trunk_state: dict, **kwargs) -> ConvNeXtV2:
    """A backbone with the given trunk weights and fresh output norms."""
    model = ConvNeXtV2('atto', **kwargs).eval()
    model.load_state_dict({k: v for k, v in trunk_state.items() if k.startswith(TRUNK)}, strict=False)
    return model


def save_pth(obj, path):
    torch.save(obj, path)
    return path


@torch.no_grad()
def test_official_release(tmp_path, writers, atto_classifier, image):
    path = save_pth(writers.official(atto_classifier.state_dict()), tmp_path / 'convnextv2_atto_1k_224_ema.pt')
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    assert model.load_report.format == 'official' and model.load_report.arch == 'atto'
    assert model.num_classes == 10 and not model.load_report.new
    assert torch.equal(model(image), atto_classifier(image))

    backbone = ConvNeXtV2.from_pretrained(path, out_features=ALL_STAGES).eval()
    report = backbone.load_report
    assert set(report.new) == {k for k in backbone.state_dict() if k.startswith('out_norms.')}
    assert set(report.ignored) == {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    assert_fresh_out_norms(backbone)
    expected = reference_backbone(atto_classifier.state_dict(), out_features=ALL_STAGES)(image)
    for got, want in zip(backbone(image), expected):
        assert torch.equal(got, want)


@torch.no_grad()
def test_fcmae_pretraining(tmp_path, writers, atto_classifier, image):
    state = atto_classifier.state_dict()
    path = save_pth(writers.fcmae(state), tmp_path / 'convnextv2_atto_1k_224_fcmae.pt')
    backbone = ConvNeXtV2.from_pretrained(path).eval()
    report = backbone.load_report
    assert report.format == 'fcmae' and report.arch == 'atto'
    assert {'mask_token', 'proj.weight', 'pred.weight', 'decoder.0.dwconv.weight'} <= set(report.ignored)
    assert_state_equal(backbone, state, [k for k in state if k.startswith(TRUNK)])
    for got, want in zip(backbone(image), reference_backbone(state)(image)):
        assert torch.equal(got, want)
    with pytest.raises(CheckpointError, match='missing keys.*head.weight'):
        ConvNeXtV2Classifier.from_pretrained(path)


def test_sparse_kernel_transforms_follow_minkowski_layout():
    """Kernel offset r = b * k + a for spatial position (a, b), as the official fine-tuning code reads it."""
    dense = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)  # (k*k, in, out), k = 2
    weight = sparse_dense_kernel(dense)
    assert weight.shape == (2, 3, 2, 2)
    assert weight[1, 2, 0, 1] == dense[1 * 2 + 0, 2, 1] and weight[0, 1, 1, 0] == dense[0 * 2 + 1, 1, 0]
    depthwise = torch.randn(49, 5)
    w = sparse_depthwise_kernel(depthwise)
    assert w.shape == (5, 1, 7, 7) and w[3, 0, 2, 6] == depthwise[6 * 7 + 2, 3]


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@torch.no_grad()
def test_timm_conv_mlp_atto(tmp_path, writers, atto_classifier, image, suffix):
    tensors = writers.timm(atto_classifier.state_dict(), conv_mlp=True)
    assert tensors['stages.0.blocks.0.mlp.fc1.weight'].shape == (160, 40, 1, 1)
    path = tmp_path / f'timm_atto{suffix}'
    save_file(tensors, str(path)) if suffix == '.safetensors' else torch.save(tensors, path)
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    assert model.load_report.format == 'timm' and model.load_report.arch == 'atto'
    assert torch.equal(model(image), atto_classifier(image))


@torch.no_grad()
def test_timm_linear_mlp_tiny(tmp_path, writers, randomize):
    source = randomize(ConvNeXtV2Classifier('tiny', num_classes=3), seed=4)
    path = tmp_path / 'timm_tiny.safetensors'
    save_file(writers.timm(source.state_dict(), conv_mlp=False), str(path))
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    assert model.load_report.format == 'timm' and model.load_report.arch == 'tiny'
    assert_state_equal(model, source.state_dict())


@torch.no_grad()
def test_mmpretrain_classifier(tmp_path, writers, atto_classifier, image):
    path = save_pth(writers.mmpretrain(atto_classifier.state_dict(), dense=False), tmp_path / 'mmpre.pth')
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    assert model.load_report.format == 'mmpretrain' and model.load_report.arch == 'atto'
    assert torch.equal(model(image), atto_classifier(image))


@torch.no_grad()
def test_mmpretrain_dense_output_norms(tmp_path, writers, atto_backbone, image):
    path = save_pth(writers.mmpretrain(atto_backbone.state_dict(), dense=True), tmp_path / 'mmpre_det.pth')
    model = ConvNeXtV2.from_pretrained(path).eval()  # stages 1..4, as mmpretrain's norm0..norm3
    report = model.load_report
    assert report.format == 'mmpretrain-dense' and not report.new
    assert {'neck.lateral_convs.0.conv.weight', 'decode_head.conv_seg.weight'} <= set(report.ignored)
    assert_state_equal(model, atto_backbone.state_dict(), model.state_dict().keys())
    for got, want in zip(model(image), atto_backbone(image)[1:]):
        assert torch.equal(got, want)


@torch.no_grad()
def test_hf_classifier_layout(tmp_path, writers, atto_classifier, image):
    folder = writers.hf_folder(tmp_path / 'hf', writers.hf(atto_classifier.state_dict(), 'classifier'))
    model = ConvNeXtV2Classifier.from_pretrained(folder).eval()
    assert model.load_report.format == 'hf' and model.load_report.arch == 'atto'
    assert model.norm.eps == 1e-12  # HF's pooled-norm layer_norm_eps, read from config.json
    assert_state_equal(model, atto_classifier.state_dict())
    assert torch.equal(ConvNeXtV2Classifier.from_pretrained(folder, head_norm_eps=1e-6).eval()(image),
                       atto_classifier(image))


@torch.no_grad()
def test_hf_model_layout(tmp_path, writers, atto_classifier, image):
    folder = writers.hf_folder(tmp_path / 'hf', writers.hf(atto_classifier.state_dict(), 'model'))
    model = ConvNeXtV2.from_pretrained(folder).eval()
    assert model.load_report.format == 'hf'
    assert set(model.load_report.ignored) == {'norm.weight', 'norm.bias'}
    for got, want in zip(model(image), reference_backbone(atto_classifier.state_dict())(image)):
        assert torch.equal(got, want)


@torch.no_grad()
def test_hf_backbone_layout(tmp_path, writers, atto_backbone, image):
    folder = writers.hf_folder(tmp_path / 'hf', writers.hf(atto_backbone.state_dict(), 'backbone'))
    model = ConvNeXtV2.from_pretrained(folder, out_features=ALL_STAGES).eval()
    assert model.load_report.format == 'hf' and not model.load_report.new
    assert_state_equal(model, atto_backbone.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model(image), atto_backbone(image)))
    partial = ConvNeXtV2.from_pretrained(folder, out_indices=(1, 3))
    assert set(partial.load_report.ignored) == {f'out_norms.{s}.{p}' for s in ('stem', 'stage1', 'stage3')
                                                for p in ('weight', 'bias')}


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@torch.no_grad()
def test_ours(tmp_path, atto_classifier, atto_backbone, image, suffix):
    path = save_checkpoint(atto_classifier, tmp_path / f'cls{suffix}')
    model = ConvNeXtV2Classifier.from_pretrained(path).eval()
    assert model.load_report.format == 'convnextv2_dense'
    assert torch.equal(model(image), atto_classifier(image))
    path = save_checkpoint(atto_backbone, tmp_path / f'bb{suffix}')
    model = ConvNeXtV2.from_pretrained(path, out_features=ALL_STAGES).eval()
    assert not model.load_report.new and not model.load_report.ignored
    assert all(torch.equal(a, b) for a, b in zip(model(image), atto_backbone(image)))


@torch.no_grad()
def test_openmmlab_detector_checkpoint(tmp_path, writers, atto_backbone, image):
    path = save_pth(writers.openmmlab(atto_backbone.state_dict()), tmp_path / 'epoch_36.pth')
    model = ConvNeXtV2.from_pretrained(path, out_features=ALL_STAGES).eval()
    report = model.load_report
    assert report.format == 'openmmlab' and report.arch == 'atto' and not report.new
    assert {'neck.fpn_convs.0.conv.weight', 'roi_head.bbox_head.fc_cls.weight'} <= set(report.ignored)
    assert all(torch.equal(a, b) for a, b in zip(model(image), atto_backbone(image)))


def test_each_format_is_detected_by_its_own_markers(writers, atto_classifier, atto_backbone):
    cls_state, bb_state = atto_classifier.state_dict(), atto_backbone.state_dict()
    layouts = {
        'official': writers.official(cls_state)['model'],
        'fcmae': writers.fcmae(cls_state)['model'],
        'hf': writers.hf(cls_state, 'classifier'),
        'hf-tf': writers.hf_tf(cls_state, 'classifier'),
        'timm': writers.timm(cls_state, conv_mlp=True),
        'mmpretrain-dense': writers.mmpretrain(bb_state, dense=True)['state_dict'],
        'mmpretrain': writers.mmpretrain(cls_state, dense=False)['state_dict'],
        'openmmlab': writers.openmmlab(bb_state)['state_dict'],
        'convnextv2_dense': cls_state,
    }
    assert set(layouts) == set(FORMAT_NAMES)
    for name, tensors in layouts.items():
        assert detect_format(tensors).name == name
        assert set(to_canonical(tensors).state_dict) <= set(cls_state) | set(bb_state)
