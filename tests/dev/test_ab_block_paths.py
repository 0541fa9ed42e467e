"""dev/ab_block_paths.py, the GPU probe of the block's eager switches, run on the CPU (--cpu-smoke) so a device
call never finds it broken; and every variant names a setting that exists."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'dev' / 'ab_block_paths.py'


def load_probe():
    spec = importlib.util.spec_from_file_location('ab_block_paths', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_sets_existing_settings_and_restores_them():
    probe = load_probe()
    before = {key: getattr(probe.MODULES[key.split('.')[0]], key.split('.')[1])
              for settings in probe.VARIANTS.values() for key in settings}
    for settings in probe.VARIANTS.values():
        with probe.overridden(settings):
            for key, value in settings.items():
                module, name = key.split('.')
                assert getattr(probe.MODULES[module], name) == value
    assert before == {key: getattr(probe.MODULES[key.split('.')[0]], key.split('.')[1]) for key in before}


def test_an_unknown_setting_is_refused_and_nothing_stays_changed():
    probe = load_probe()
    shipped = probe.fused.NORM_IN_BF16
    with pytest.raises(AttributeError, match='fused.NO_SUCH_SWITCH'):
        with probe.overridden({'fused.NORM_IN_BF16': not shipped, 'fused.NO_SUCH_SWITCH': 1}):
            pass
    assert probe.fused.NORM_IN_BF16 == shipped


def test_cpu_smoke_prints_the_table_and_writes_the_json(tmp_path):
    pytest.importorskip('transformers')
    report = tmp_path / 'ab.json'
    done = subprocess.run([sys.executable, str(SCRIPT), '--cpu-smoke', '--json-out', str(report)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '| as shipped |' in done.stdout and '| LN bf16 |' in done.stdout
    results = json.loads(report.read_text())['results']
    assert [r['variant'] for r in results] == ['as shipped', 'LN bf16']
    assert all(r['ms_median'] > 0 and r['vs_hf'] > 0 and 0 < r['out_err'] < 2e-2 for r in results)
