"""Parity with HF transformers through the real route: HF model -> save_pretrained(folder) -> our from_pretrained.

Random non-zero weights everywhere (GRN included: a zero GRN is an identity and hides bugs); fp32 outputs
must agree to 1e-4 relative for every arch, on odd input sizes too.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip('transformers')
from transformers import (ConvNextV2Backbone, ConvNextV2Config, ConvNextV2ForImageClassification,  # noqa: E402
                          ConvNextV2Model)

from convnextv2_dense.models import ARCHS, ConvNeXtV2, ConvNeXtV2Classifier  # noqa: E402

ALL_STAGES = ['stem', 'stage1', 'stage2', 'stage3', 'stage4']
RTOL = 1e-4
SMALLER_THAN_HUGE = [pytest.param(name, marks=pytest.mark.slow) if name == 'large' else name  # ~15 s each on a CPU
                     for name in ARCHS if name != 'huge']


def hf_config(arch: str, **kwargs) -> ConvNextV2Config:
    spec = ARCHS[arch]
    return ConvNextV2Config(depths=list(spec.depths), hidden_sizes=list(spec.dims), **kwargs)


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, what
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert error < RTOL, f'{what}: relative error {error:.2e}'


@torch.no_grad()
def check_backbone(randomize, arch: str, folder, x: torch.Tensor, seed: int = 0) -> None:
    hf = randomize(ConvNextV2Backbone(hf_config(arch, out_features=ALL_STAGES)), seed)
    hf.save_pretrained(folder)
    ours = ConvNeXtV2.from_pretrained(folder, out_features=ALL_STAGES).eval()
    assert ours.load_report.format == 'hf' and ours.load_report.arch == arch and not ours.load_report.new
    features = ours(x)
    for name, mine, theirs in zip(ALL_STAGES, features, hf(pixel_values=x).feature_maps, strict=True):
        assert_close(mine, theirs, f'{arch} {name}')
    assert [f.shape[1] for f in features] == list(ours.out_channels)


@torch.no_grad()
def check_classifier(randomize, arch: str, folder, x: torch.Tensor, seed: int = 1) -> None:
    hf = randomize(ConvNextV2ForImageClassification(hf_config(arch, num_labels=7)), seed)
    hf.save_pretrained(folder)
    ours = ConvNeXtV2Classifier.from_pretrained(folder).eval()
    assert ours.load_report.format == 'hf' and ours.load_report.arch == arch
    assert ours.num_classes == 7 and ours.norm.eps == hf.config.layer_norm_eps
    assert_close(ours(x), hf(pixel_values=x).logits, f'{arch} logits')


@pytest.mark.parametrize('arch', SMALLER_THAN_HUGE)
def test_backbone_features_match_hf(arch, tmp_path, randomize):
    check_backbone(randomize, arch, tmp_path, image(64, 96))


@pytest.mark.parametrize('arch', SMALLER_THAN_HUGE)
def test_classifier_logits_match_hf(arch, tmp_path, randomize):
    check_classifier(randomize, arch, tmp_path, image(64, 96))


@pytest.mark.slow
def test_huge_backbone_matches_hf(tmp_path, randomize):
    check_backbone(randomize, 'huge', tmp_path, image(32, 32))


@pytest.mark.parametrize('arch, size', [('atto', (97, 131)), ('atto', (65, 33)), ('tiny', (97, 131))])
def test_odd_input_sizes(arch, size, tmp_path, randomize):
    check_backbone(randomize, arch, tmp_path / 'backbone', image(*size, seed=5))
    check_classifier(randomize, arch, tmp_path / 'classifier', image(*size, seed=6))


@pytest.mark.parametrize('arch', ['atto', 'tiny'])
@torch.no_grad()
def test_save_pretrained_model_gives_the_same_features_back(arch, tmp_path, randomize):
    """The issue's criterion: a random HF ConvNextV2Model saved with save_pretrained gives its features back."""
    hf_model = randomize(ConvNextV2Model(hf_config(arch)), seed=7)
    hf_model.save_pretrained(tmp_path)
    ours = ConvNeXtV2.from_pretrained(tmp_path, out_features=ALL_STAGES).eval()
    assert ours.load_report.format == 'hf'
    assert set(ours.load_report.ignored) == {'norm.weight', 'norm.bias'}  # the Model's pooled LayerNorm
    x = image(97, 131, seed=8)
    features = ours(x)
    # Against the Model's own hidden states, through the fresh (identity-affine) output LayerNorms ...
    hidden = hf_model(pixel_values=x, output_hidden_states=True).hidden_states
    for name, mine, theirs in zip(ALL_STAGES, features, hidden, strict=True):
        reference = F.layer_norm(theirs.permute(0, 2, 3, 1), theirs.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
        assert_close(mine, reference, f'{arch} {name} vs ConvNextV2Model')
    assert_close(ours.iter_stages(x).__next__()[1], hidden[0], f'{arch} embeddings')
    # ... and against HF's own backbone loaded from the same folder.
    hf_backbone = ConvNextV2Backbone.from_pretrained(tmp_path, out_features=ALL_STAGES).eval()
    for name, mine, theirs in zip(ALL_STAGES, features, hf_backbone(pixel_values=x).feature_maps, strict=True):
        assert_close(mine, theirs, f'{arch} {name} vs ConvNextV2Backbone')


@torch.no_grad()
def test_pytorch_model_bin_folder(tmp_path, randomize):
    """``safe_serialization=False`` folders hold ``pytorch_model.bin``.

    transformers 5 writes safetensors regardless; then the folder is written as transformers 4 did
    (a plain state dict in ``pytorch_model.bin`` next to ``config.json``).
    """
    hf = randomize(ConvNextV2ForImageClassification(hf_config('atto', num_labels=5)), seed=9)
    hf.save_pretrained(tmp_path, safe_serialization=False)
    if not (tmp_path / 'pytorch_model.bin').exists():
        (tmp_path / 'model.safetensors').unlink()
        torch.save(hf.state_dict(), tmp_path / 'pytorch_model.bin')
    assert not (tmp_path / 'model.safetensors').exists()
    ours = ConvNeXtV2Classifier.from_pretrained(tmp_path).eval()
    assert ours.load_report.format == 'hf'
    x = image(97, 131, seed=10)
    assert_close(ours(x), hf(pixel_values=x).logits, 'atto logits from pytorch_model.bin')
