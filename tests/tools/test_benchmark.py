"""tools/benchmark.py, backbone mode, on the CPU: the table has one row per (impl, mode) and ours matches HF.

A smoke test of the tool, not a timed test: no assertion on any speed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip('transformers')
TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'benchmark.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbone_table_on_cpu(tmp_path, capsys):
    json_out = tmp_path / 'bench.json'
    argv = ['backbone', '--device', 'cpu', '--impl', 'ours', 'hf', '--arch', 'atto', '--input', '64',
            '--batch', '1', '--warmup', '1', '--iters', '1', '--json-out', str(json_out)]
    assert load_tool().main(argv) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith('| ') and not line.startswith('| impl')]
    assert [line.split(' | ')[:5] for line in rows] == [
        ['| ours', 'atto', '64', '1', 'train'], ['| hf', 'atto', '64', '1', 'train'],
        ['| ours', 'atto', '64', '1', 'infer'], ['| hf', 'atto', '64', '1', 'infer']]
    assert all(line.endswith('| ok |') for line in rows), rows
    assert 'parity ours vs HF' in table and 'device: CPU' in table
    report = json.loads(json_out.read_text())
    assert report['parity']['atto'] < 1e-4
    assert all(row['status'] == 'ok' and row['ms_per_iter'] > 0 for row in report['rows'])


def test_hf_adapter_hands_over_maps_in_the_input_layout():
    import torch

    from convnextv2_dense.utils.benchmark import HFBackbone
    model = HFBackbone('atto')
    assert all(f.is_contiguous() for f in model(torch.randn(2, 3, 64, 64)))
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in model(x))


@pytest.mark.parametrize('config, extra', [
    ('configs/demo/upernet_convnextv2_atto_demo.py', ['--img-size', '64']),
    ('configs/demo/mask-rcnn_convnextv2_atto_demo.py', ['--img-size', '128', '--img-per-gpu', '1', '--boxes', '3'])])
def test_full_iteration_table_on_cpu(tmp_path, capsys, config, extra):
    pytest.importorskip('mmengine')
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', config, '--backbone-impl', 'ours', 'hf', '--device', 'cpu', '--warmup', '1',
            '--iters', '1', '--json-out', str(json_out), *extra]
    assert load_tool().main(argv) == 0
    assert 'model.train_step' in capsys.readouterr().out
    rows = json.loads(json_out.read_text())['rows']
    assert [row['impl'] for row in rows] == ['ours', 'hf']
    assert all(row['status'] == 'ok' and row['ms_per_iter'] > 0 and row['extra']['backbone_ms'] > 0 for row in rows)
    # Same heads and the same layer-decay groups for both backbones, so the rows compare.
    assert rows[0]['extra']['param_groups'] == rows[1]['extra']['param_groups']
    assert rows[0]['extra']['params_m'] == pytest.approx(rows[1]['extra']['params_m'])


def test_the_ours_row_runs_eager_even_where_the_config_compiles(tmp_path, monkeypatch):
    pytest.importorskip('mmengine')
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError('the ours row compiled')

    monkeypatch.setattr(torch, 'compile', refuse)
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', 'configs/upernet_convnextv2_atto_ade20k.py', '--backbone-impl', 'ours', '--device', 'cpu',
            '--warmup', '1', '--iters', '1', '--img-size', '64', '--json-out', str(json_out)]
    assert load_tool().main(argv) == 0
    assert [row['status'] for row in json.loads(json_out.read_text())['rows']] == ['ok']
