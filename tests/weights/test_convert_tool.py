"""``tools/convert_checkpoint.py`` run as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnextv2_dense.models import ConvNeXtV2Classifier
from convnextv2_dense.weights import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'convert_checkpoint.py'


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@torch.no_grad()
def test_convert_official_release(tmp_path, writers, atto_classifier, image, suffix):
    src, dst = tmp_path / 'convnextv2_atto_1k_224_ema.pt', tmp_path / f'atto{suffix}'
    torch.save(writers.official(atto_classifier.state_dict()), src)
    result = run_tool(str(src), str(dst), '--arch-check')
    assert result.returncode == 0, result.stderr
    assert 'format detected: official' in result.stdout
    assert 'arch: atto' in result.stdout and 'tensors written: 140' in result.stdout
    assert 'ConvNeXtV2Classifier built and loaded strictly' in result.stdout
    raw = read_checkpoint(dst)
    assert raw.meta['format'] == 'convnextv2_dense' and raw.meta['source_format'] == 'official'
    model = ConvNeXtV2Classifier.from_pretrained(dst).eval()
    assert model.load_report.format == 'convnextv2_dense'
    assert torch.equal(model(image), atto_classifier(image))


def test_convert_refuses_another_arch(tmp_path, writers, atto_classifier):
    src = tmp_path / 'atto.pt'
    torch.save(writers.official(atto_classifier.state_dict()), src)
    result = run_tool(str(src), str(tmp_path / 'out.pth'), '--arch', 'tiny')
    assert result.returncode == 1 and 'atto, not tiny' in result.stderr
    assert not (tmp_path / 'out.pth').exists()
