"""``init_cfg=dict(type='Pretrained', checkpoint=...)`` + ``init_weights()``: the OpenMMLab route, strict."""
from __future__ import annotations

import pytest
import torch

from convnextv2_dense.models import ConvNeXtV2
from convnextv2_dense.weights import CheckpointError


@torch.no_grad()
def test_init_weights_loads_strictly(tmp_path, writers, atto_classifier, image):
    path = tmp_path / 'convnextv2_atto_1k_224_ema.pt'
    torch.save(writers.official(atto_classifier.state_dict()), path)
    model = ConvNeXtV2('atto', frozen_stages=1, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert model.load_report.format == 'official'
    state = atto_classifier.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith('out_norms.'):
            assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in model.stages[0].parameters())  # frozen after loading


def test_init_weights_with_a_bad_file_raises(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'\x80\x02garbage')
    model = ConvNeXtV2('atto', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='broken.pth'):
        model.init_weights()


def test_init_weights_with_another_arch_raises(tmp_path, atto_classifier):
    path = tmp_path / 'atto.pth'
    torch.save({'model': atto_classifier.state_dict()}, path)
    model = ConvNeXtV2('femto', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='atto.*femto'):
        model.init_weights()
