"""dev/check_fused.py, the GPU check of the fused block, run on the CPU (--cpu-smoke) so a device call never
finds it broken: every table prints, for every MLP form, and the JSON report holds every row."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('triton') is None or int(importlib.metadata.version('triton').split('.')[0]) < 3,
    reason="needs triton >= 3.0, whose interpreter runs kernels on CPU tensors")


def test_cpu_smoke_prints_every_table(tmp_path):
    report = tmp_path / 'fused.json'
    done = subprocess.run([sys.executable, 'dev/check_fused.py', '--cpu-smoke', '--json-out', str(report)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for form in ('folded', 'applied', 'matmuls'):
        assert f'fused ({form})' in done.stdout
    assert '| matmuls: h err |' in done.stdout and '| infer: plain |' in done.stdout
    data = json.loads(report.read_text())
    assert len(data['timing']) == 2 and {'matmuls_ms', 'infer_matmuls_ms', 'infer_cudnn_ms'} <= set(data['timing'][0])
    assert len(data['numerics']) == 2 * (3 + 4 + 4)  # per shape: fp32 fused forms, bf16 and fp16 with plain
