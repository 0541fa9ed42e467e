"""The backbone of a shipped config loads the official file its ``init_cfg`` names, through the URL itself.

No network: ``urlopen`` is answered with a synthetic file in the official layout (the writers of
tests/weights/conftest.py), so the config's URL, the download cache, format detection and the strict
loader all run as they do for a user.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier  # noqa: E402
from convnextv2_dense.weights import io as weights_io  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WRITERS = REPO / 'tests' / 'weights' / 'conftest.py'


def weight_writers():
    spec = importlib.util.spec_from_file_location('weight_writers', WRITERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {'Content-Length': str(len(payload))}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(monkeypatch, tmp_path: Path, checkpoint: dict) -> list[str]:
    """Answer every download with ``checkpoint`` (torch.save bytes); return the URLs asked for."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    asked: list[str] = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return FakeResponse(buffer.getvalue())

    monkeypatch.setenv(weights_io.CACHE_ENV, str(tmp_path / 'cache'))
    monkeypatch.setattr(weights_io.urllib.request, 'urlopen', urlopen)
    return asked


def configured_backbone(config: str) -> tuple[ConvNeXtV2, str]:
    cfg = Config.fromfile(str(REPO / 'configs' / config))
    args = {k: v for k, v in cfg.model.backbone.items() if k not in ('type', 'compile')}
    return ConvNeXtV2(**args), cfg.model.backbone.init_cfg.checkpoint


@torch.no_grad()
def test_paper_coco_recipe_loads_the_fcmae_pretraining(monkeypatch, tmp_path, randomize):
    writers = weight_writers()
    source = randomize(ConvNeXtV2Classifier('atto', num_classes=10), seed=5)
    asked = serve(monkeypatch, tmp_path, writers.to_fcmae(source.state_dict()))
    backbone, url = configured_backbone('mask-rcnn_convnextv2_atto_fpn_3x_coco.py')
    backbone.init_weights()
    assert asked == [url] and url.endswith('/pt_only/convnextv2_atto_1k_224_fcmae.pt')
    assert (backbone.load_report.format, backbone.load_report.arch) == ('fcmae', 'atto')
    expected = source.state_dict()
    trunk = [k for k in backbone.state_dict() if not k.startswith('out_norms.')]
    assert trunk and all(torch.equal(backbone.state_dict()[k], expected[k]) for k in trunk)
    grn = backbone.state_dict()['stages.2.5.grn.gamma']
    assert grn.abs().sum() > 0  # the GRN came from the file, not left at its zero init


@torch.no_grad()
def test_fine_tuned_start_loads_the_official_release(monkeypatch, tmp_path, randomize):
    writers = weight_writers()
    source = randomize(ConvNeXtV2Classifier('atto', num_classes=10), seed=6)
    asked = serve(monkeypatch, tmp_path, writers.to_official(source.state_dict()))
    backbone, url = configured_backbone('mask-rcnn_convnextv2_atto-in1k-ft-pre_fpn_3x_coco.py')
    backbone.init_weights()
    assert asked == [url] and url.endswith('/im1k/convnextv2_atto_1k_224_ema.pt')
    assert (backbone.load_report.format, backbone.load_report.arch) == ('official', 'atto')
    key = 'stages.3.1.pwconv2.weight'
    assert torch.equal(backbone.state_dict()[key], source.state_dict()[key])
