"""``tools/convert_checkpoint.py`` run as a user runs it, and the HF transformers folder it can write."""
from __future__ import annotations

import json

import pytest
import torch

from convnextv2_dense.models import STAGE_NAMES, ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import read_checkpoint, save_hf_pretrained

TOOL = 'tools/convert_checkpoint.py'


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@torch.no_grad()
def test_convert_official_release(tmp_path, writers, atto_classifier, image, suffix, run_tool):
    src, dst = tmp_path / 'convnextv2_atto_1k_224_ema.pt', tmp_path / f'atto{suffix}'
    torch.save(writers.official(atto_classifier.state_dict()), src)
    result = run_tool(TOOL, src, dst, '--arch-check', check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'format detected: official' in result.stdout
    assert 'arch: atto' in result.stdout and 'tensors written: 140' in result.stdout
    assert 'ConvNeXtV2Classifier built and loaded strictly' in result.stdout
    raw = read_checkpoint(dst)
    assert raw.meta['format'] == 'convnextv2_dense' and raw.meta['source_format'] == 'official'
    model = ConvNeXtV2Classifier.from_pretrained(dst).eval()
    assert model.load_report.format == 'convnextv2_dense'
    assert torch.equal(model(image), atto_classifier(image))


def test_convert_refuses_another_arch(tmp_path, writers, atto_classifier, run_tool):
    src = tmp_path / 'atto.pt'
    torch.save(writers.official(atto_classifier.state_dict()), src)
    result = run_tool(TOOL, src, tmp_path / 'out.pth', '--arch', 'tiny', check=False, timeout=300)
    assert result.returncode == 1 and 'atto, not tiny' in result.stderr
    assert not (tmp_path / 'out.pth').exists()


# ------------------------------------------------------------------------- back to HF transformers
def hf_load(cls_name: str, folder):
    """``transformers.<cls_name>.from_pretrained(folder)``, asserting that every key matched."""
    transformers = pytest.importorskip('transformers')
    model, info = getattr(transformers, cls_name).from_pretrained(folder, output_loading_info=True)
    for kind in ('missing_keys', 'unexpected_keys', 'mismatched_keys'):
        assert not info[kind], (kind, info[kind])
    return model.eval()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_classifier_to_hf_and_back(tmp_path, atto_classifier, image):
    folder = tmp_path / 'hf'
    export = save_hf_pretrained(atto_classifier.state_dict(), folder, atto_classifier.arch_spec,
                                id2label={i: f'shape{i}' for i in range(10)})
    assert export.architecture == 'ConvNextV2ForImageClassification' and not export.fresh and not export.left_out
    config = json.loads((folder / 'config.json').read_text())
    assert config['depths'] == [2, 2, 6, 2] and config['hidden_sizes'] == [40, 80, 160, 320]
    assert config['layer_norm_eps'] == 1e-6 and config['id2label']['3'] == 'shape3'
    hf = hf_load('ConvNextV2ForImageClassification', folder)
    assert hf.config.num_labels == 10 and hf.config.id2label[3] == 'shape3'
    assert_close(atto_classifier(image), hf(pixel_values=image).logits)
    ours = ConvNeXtV2Classifier.from_pretrained(folder).eval()
    assert ours.load_report.format == 'hf' and not ours.load_report.new
    assert torch.equal(ours(image), atto_classifier(image))


@torch.no_grad()
def test_classifier_folder_also_loads_as_hf_model(tmp_path, atto_classifier, image):
    """ConvNextV2Model takes the base model of a ForImageClassification folder (the head is HF's to skip)."""
    folder = tmp_path / 'hf'
    save_hf_pretrained(atto_classifier.state_dict(), folder, atto_classifier.arch_spec)
    transformers = pytest.importorskip('transformers')
    hf = transformers.ConvNextV2Model.from_pretrained(folder).eval()
    assert_close(atto_classifier.forward_features(image), hf(pixel_values=image).pooler_output)


@torch.no_grad()
def test_dense_backbone_to_hf_backbone_and_back(tmp_path, atto_backbone, image):
    """A fine-tuned dense backbone keeps its output norms: HF's ConvNextV2Backbone with those out_features."""
    folder = tmp_path / 'hf'
    export = save_hf_pretrained(atto_backbone.state_dict(), folder, atto_backbone.arch_spec)
    assert export.architecture == 'ConvNextV2Backbone' and not export.fresh and not export.left_out
    hf = hf_load('ConvNextV2Backbone', folder)
    assert list(hf.config.out_features) == list(STAGE_NAMES)
    for mine, theirs in zip(atto_backbone(image), hf(pixel_values=image).feature_maps, strict=True):
        assert_close(mine, theirs)
    ours = ConvNeXtV2.from_pretrained(folder, out_features=list(STAGE_NAMES)).eval()
    assert ours.load_report.format == 'hf' and not ours.load_report.new
    assert all(torch.equal(a, b) for a, b in zip(ours(image), atto_backbone(image), strict=True))


@torch.no_grad()
def test_detector_checkpoint_to_hf_through_the_tool(tmp_path, writers, atto_backbone, image, run_tool):
    """An mmdet training checkpoint (stages 1..4 with output norms) -> an HF backbone folder, by the tool."""
    dense = ConvNeXtV2('atto').eval()
    dense.load_state_dict({k: v for k, v in atto_backbone.state_dict().items() if k in dense.state_dict()})
    src = tmp_path / 'epoch_36.pth'
    torch.save(writers.openmmlab(dense.state_dict()), src)
    result = run_tool(TOOL, src, tmp_path / 'hf', '--to', 'hf', '--arch-check', check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'format detected: openmmlab' in result.stdout and 'HF class: ConvNextV2Backbone' in result.stdout
    assert 'ConvNeXtV2 built and loaded strictly' in result.stdout
    hf = hf_load('ConvNextV2Backbone', tmp_path / 'hf')
    assert list(hf.config.out_features) == ['stage1', 'stage2', 'stage3', 'stage4']
    for mine, theirs in zip(dense(image), hf(pixel_values=image).feature_maps, strict=True):
        assert_close(mine, theirs)


@torch.no_grad()
def test_fcmae_trunk_to_hf_model_with_a_fresh_pooled_norm(tmp_path, writers, atto_classifier, image, run_tool):
    """A bare trunk has no pooled norm: ConvNextV2Model gets an identity one, and the tool says so."""
    src = tmp_path / 'convnextv2_atto_1k_224_fcmae.pt'
    torch.save(writers.fcmae(atto_classifier.state_dict()), src)
    result = run_tool(TOOL, src, tmp_path / 'hf', '--to', 'hf', check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'HF class: ConvNextV2Model' in result.stdout
    assert 'written fresh (not in' in result.stdout and 'layernorm.weight, layernorm.bias' in result.stdout
    hf = hf_load('ConvNextV2Model', tmp_path / 'hf')
    assert torch.equal(hf.layernorm.weight, torch.ones(320)) and torch.equal(hf.layernorm.bias, torch.zeros(320))
    *_, (_, last) = atto_classifier.iter_stages(image)
    assert_close(last, hf(pixel_values=image).last_hidden_state)


def test_hf_class_that_needs_a_head_is_refused(tmp_path, writers, atto_backbone, run_tool):
    src = tmp_path / 'bb.pth'
    torch.save(writers.openmmlab(atto_backbone.state_dict()), src)
    result = run_tool(TOOL, src, tmp_path / 'hf', '--to', 'hf', '--hf-class', 'ConvNextV2ForImageClassification',
                      check=False, timeout=300)
    assert result.returncode == 1
    assert 'error: ConvNextV2ForImageClassification needs the pooled norm and the head' in result.stderr
    assert not (tmp_path / 'hf' / 'model.safetensors').exists()


def test_hf_class_that_drops_tensors_names_them(tmp_path, atto_classifier):
    export = save_hf_pretrained(atto_classifier.state_dict(), tmp_path / 'hf', atto_classifier.arch_spec,
                                architecture='ConvNextV2Model')
    assert export.left_out == ('head.bias', 'head.weight')
    hf_load('ConvNextV2Model', tmp_path / 'hf')


def test_hf_config_matches_transformers_own(tmp_path, atto_classifier):
    """Every field we write is one ConvNextV2Config has, with the value it reads back."""
    transformers = pytest.importorskip('transformers')
    save_hf_pretrained(atto_classifier.state_dict(), tmp_path, atto_classifier.arch_spec)
    written = json.loads((tmp_path / 'config.json').read_text())
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(config).__name__ == 'ConvNextV2Config'
    theirs = config.to_dict()
    for key, value in written.items():
        if key in ('id2label', 'label2id'):
            continue
        assert theirs[key] == value, key


@torch.no_grad()
def test_tf_h5_to_hf_pytorch_folder(tmp_path, writers, atto_classifier, image, run_tool):
    """HF's TensorFlow weights become an HF PyTorch folder, without TensorFlow."""
    pytest.importorskip('h5py')
    src = writers.keras_h5(tmp_path / 'tf_model.h5', writers.hf_tf(atto_classifier.state_dict(), 'classifier'),
                           'classifier')
    result = run_tool(TOOL, src, tmp_path / 'hf', '--to', 'hf', check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'format detected: hf-tf' in result.stdout
    assert 'HF class: ConvNextV2ForImageClassification' in result.stdout
    hf = hf_load('ConvNextV2ForImageClassification', tmp_path / 'hf')
    assert_close(atto_classifier(image), hf(pixel_values=image).logits)
