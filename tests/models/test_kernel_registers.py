"""The Triton kernels compiled for an H100 (sm_90) on the CPU do not spill (dev/kernel_registers.py).

A depthwise kernel whose 49 taps were all unrolled hoisted every load and spilled 5 KB per thread to local
memory at its shipped tile; this catches that kind of regression without a GPU.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def can_compile_for_sm90() -> bool:
    if importlib.util.find_spec('triton') is None or int(importlib.metadata.version('triton').split('.')[0]) < 3:
        return False
    spec = importlib.util.find_spec('triton.backends.nvidia')
    return spec is not None and os.path.exists(os.path.join(os.path.dirname(spec.origin), 'bin', 'cuobjdump'))


@pytest.mark.skipif(not can_compile_for_sm90(), reason="needs triton >= 3.0 with its NVIDIA backend's tools")
def test_shipped_kernel_configurations_do_not_spill():
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'dev', 'kernel_registers.py'), '--json'],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    usage = json.loads(result.stdout)
    names = set(usage)
    for expected in ('dwconv+norm 32x128', 'dwconv+norm 16x256', 'gelu_grn', 'grn_grad_sums', 'gelu_grn_grad',
                     'sumsq_of_gelu', 'linear_gelu_sumsq 128x128x32', 'grn_linear 128x128x32 residual gelu'):
        assert expected in names, sorted(names)
    spilling = {name: row for name, row in usage.items() if row['stack'] > 0}
    assert not spilling, f'kernels that spill to local memory (bytes per thread): {spilling}'
    assert result.returncode == 0
