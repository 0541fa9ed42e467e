"""dev/check_grn.py, the GPU check of GRN's written-out backward, run on the CPU (--cpu-smoke) so a device call
never finds it broken: a row per shape and dtype, the gradients agreeing with autograd's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cpu_smoke_prints_a_row_per_shape_and_dtype(tmp_path):
    report = tmp_path / 'grn.json'
    done = subprocess.run([sys.executable, 'dev/check_grn.py', '--cpu-smoke', '--json-out', str(report)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '| N2 4x4 4C16 | bfloat16 |' in done.stdout and '| N3 5x5 4C32 | float32 |' in done.stdout
    rows = json.loads(report.read_text())['rows']
    assert len(rows) == 4 and all(r['autograd_ms'] > 0 and r['written_out_ms'] > 0 for r in rows)
    assert max(r['max_rel_grad_diff'] for r in rows if r['dtype'] == 'float32') < 1e-5
