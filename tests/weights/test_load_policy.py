"""The loader follows what each model declares: the stages a backbone does not build are reported as unused,
never an error and never loaded; a backbone that built only its first stages saves and loads as such."""
from __future__ import annotations

import pytest
import torch

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import CheckpointError, load_weights, read_canonical, save_checkpoint

ALL_STAGES = ['stem', 'stage1', 'stage2', 'stage3', 'stage4']


@pytest.mark.parametrize('selection, built', [(dict(out_indices=(0, 1, 2)), 3), (dict(out_features=['stem']), 0),
                                              (dict(out_indices=(1,)), 2)])
@torch.no_grad()
def test_skipped_stages_are_reported_as_unused(tmp_path, atto_classifier, image, selection, built):
    path = save_checkpoint(atto_classifier, tmp_path / 'cls.safetensors')
    model = ConvNeXtV2.from_pretrained(path, **selection).eval()
    report = model.load_report
    want = {k for k in atto_classifier.state_dict()
            if k.startswith(tuple(f'stages.{i}.' for i in range(built, 4))
                            + tuple(f'downsample_layers.{i}.' for i in range(max(built, 1), 4)))}
    assert set(report.skipped) == want
    assert set(report.ignored) == {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    assert 'stages this backbone does not build' in str(report)
    assert len(model.stages) == built
    full = ConvNeXtV2.from_pretrained(path, out_features=ALL_STAGES).eval()
    wanted = dict(zip(ALL_STAGES, full(image)))
    for name, feature in zip(model.out_features, model(image), strict=True):
        assert torch.equal(feature, wanted[name])


def test_a_backbone_that_built_its_first_stages_declares_its_whole_arch(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'cls.pth')
    early = ConvNeXtV2.from_pretrained(path, out_indices=(0, 1))
    saved = save_checkpoint(early, tmp_path / 'early.safetensors')
    assert read_canonical(saved).arch == atto_classifier.arch_spec  # not a two-stage model
    again = ConvNeXtV2.from_pretrained(saved, out_indices=(1,))
    assert again.arch == 'atto' and not again.load_report.skipped
    with pytest.raises(CheckpointError, match=r'holds only the first 2 stages of its ConvNeXt V2-atto .* model runs 4; '
                                              r'select stages up to stage2'):
        ConvNeXtV2.from_pretrained(saved)  # all four stages asked for, two saved


def test_a_detector_checkpoint_of_a_truncated_backbone_loads_into_the_same_selection(tmp_path, writers, randomize):
    backbone = randomize(ConvNeXtV2('atto', out_indices=(0, 1, 2)), seed=5)
    path = tmp_path / 'epoch_1.pth'
    torch.save(writers.openmmlab(backbone.state_dict()), path)
    model = ConvNeXtV2('atto', out_indices=(0, 1, 2))
    report = load_weights(model, path)
    assert report.format == 'openmmlab' and not report.new and not report.skipped
    with pytest.raises(CheckpointError, match=r'holds a ConvNeXt V2-custom \(depths=\(2, 2, 6\)'):
        load_weights(ConvNeXtV2('atto'), path)


def test_a_classifier_is_never_loaded_from_a_backbone(tmp_path, atto_backbone):
    path = save_checkpoint(atto_backbone, tmp_path / 'bb.pth')
    with pytest.raises(CheckpointError, match=r'missing keys: head\.bias, head\.weight, norm\.bias, norm\.weight'):
        ConvNeXtV2Classifier.from_pretrained(path)


def test_a_module_that_declares_no_policy_gets_the_strictest(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'cls.pth')
    plain = torch.nn.Module()
    plain.head = torch.nn.Linear(320, 10)
    with pytest.raises(CheckpointError, match=r'unexpected keys: downsample_layers'):
        load_weights(plain, path)


def test_stage_counts_other_than_four_load_from_our_files(tmp_path, writers, randomize):
    source = randomize(ConvNeXtV2Classifier(depths=(1, 1, 2, 1, 1), dims=(8, 8, 16, 16, 24), num_classes=3,
                                                    patch_size=2, act='gelu_new'), seed=7)
    path = save_checkpoint(source, tmp_path / 'five.safetensors')
    model = ConvNeXtV2Classifier.from_pretrained(path)
    assert (model.depths, model.patch_size, model.act) == ((1, 1, 2, 1, 1), 2, 'gelu_new')
    assert model.stage_names[-1] == 'stage5'
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.eval()(x), source.eval()(x))



def test_our_files_record_their_activation(tmp_path, atto_classifier):
    path = save_checkpoint(atto_classifier, tmp_path / 'cls.safetensors')
    with pytest.raises(CheckpointError, match="made with act='gelu' .* the model uses act='relu'"):
        load_weights(ConvNeXtV2Classifier('atto', num_classes=10, act='relu'), path)
