"""Tests for tools/plot_logs.py and convnextv2_dense.bench.plot_logs on fake mmengine scalar logs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from convnextv2_dense.bench.plot_logs import find_scalar_log, load_scalar_log, plot_logs

pytest.importorskip('matplotlib')
TOOL = 'tools/plot_logs.py'


def _seg_lines() -> list[dict]:
    lines = []
    for it in range(10, 410, 10):
        lines.append({'lr': 1e-4, 'data_time': 0.01, 'loss': 2.0 - it / 400, 'decode.loss_ce': 1.5 - it / 400,
                      'aux.loss_ce': 0.5, 'time': 0.2, 'iter': it, 'memory': 900, 'step': it})
        if it % 200 == 0:
            lines.append({'aAcc': 70 + it / 40, 'mIoU': 30 + it / 20, 'mAcc': 40 + it / 20, 'data_time': 0.01,
                          'time': 0.1, 'step': it})
    return lines


def _det_lines() -> list[dict]:
    lines = []
    for epoch in (1, 2):
        for it in (50, 100):
            step = (epoch - 1) * 100 + it
            lines.append({'base_lr': 2e-4, 'lr': 2e-4, 'data_time': 0.01, 'loss': 3.0 / step, 'loss_rpn_cls': 0.1,
                          'loss_bbox': 0.2, 'loss_mask': 0.3, 'acc': 90.0, 'time': 0.3, 'epoch': epoch,
                          'iter': step, 'memory': 2000, 'step': step})
        lines.append({'coco/bbox_mAP': 0.1 * epoch, 'coco/bbox_mAP_50': 0.2 * epoch, 'coco/segm_mAP': 0.05 * epoch,
                      'coco/segm_mAP_50': 0.1 * epoch, 'data_time': 0.01, 'time': 0.1, 'step': epoch})
    return lines


def _write_run(work_dir: Path, timestamp: str, lines: list[dict], extra: str = '') -> Path:
    vis = work_dir / timestamp / 'vis_data'
    vis.mkdir(parents=True)
    text = ''.join(json.dumps(line) + '\n' for line in lines) + extra
    (vis / 'scalars.json').write_text(text)
    (vis / f'{timestamp}.json').write_text(text)
    return vis / 'scalars.json'


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.size[0] > 100 and image.size[1] > 100


def test_cli_writes_loss_and_metrics(tmp_path: Path, run_tool) -> None:
    work_dir = tmp_path / 'upernet'
    _write_run(work_dir, '20240101_000000', _seg_lines()[:3])
    newest = _write_run(work_dir, '20240102_000000', _seg_lines(), extra='{"loss": 1.0, "it')  # killed mid-line
    out = tmp_path / 'plots'
    result = run_tool(TOOL, work_dir, '--out-dir', out, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / 'loss.png'), str(out / 'metrics.png')]
    _assert_png(out / 'loss.png')
    _assert_png(out / 'metrics.png')
    assert find_scalar_log(work_dir) == newest


def test_detection_log_by_epoch(tmp_path: Path) -> None:
    path = _write_run(tmp_path / 'mask-rcnn', '20240101_000000', _det_lines())
    log = load_scalar_log(path)
    assert log.name == 'mask-rcnn' and log.by_epoch
    assert len(log.train) == 4 and len(log.val) == 2
    assert log.keys('val') == ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50']
    written = plot_logs([path, tmp_path / 'mask-rcnn'], tmp_path / 'out')
    assert [p.name for p in written] == ['loss.png', 'metrics.png']
    for p in written:
        _assert_png(p)


def test_metric_families_and_unmeasured_metrics(tmp_path: Path) -> None:
    from convnextv2_dense.bench.plot_logs import _metric_family, _select_keys
    assert _metric_family('coco/bbox_mAP_50') == 'coco/bbox'
    assert _metric_family('coco/circle_precision') == _metric_family('coco/square_precision') \
        == 'coco/per-class precision'
    assert _metric_family('mIoU') == 'mIoU'
    lines = _det_lines()
    for line in lines:
        if 'coco/bbox_mAP' in line:
            line.update({'coco/bbox_mAP_l': -1.0, 'coco/bbox_mAP_s': -1.0 if line['step'] == 1 else 0.3})
    log = load_scalar_log(_write_run(tmp_path / 'run', '20240101_000000', lines))
    _, val_keys = _select_keys([log], None)
    assert 'coco/bbox_mAP_l' not in val_keys  # -1 throughout: no large objects, nothing to draw
    assert 'coco/bbox_mAP_s' in val_keys and 'coco/bbox_mAP' in val_keys
    assert _select_keys([log], ['coco/bbox_mAP_l'])[1] == ['coco/bbox_mAP_l']  # asked for: drawn anyway


def test_selected_keys(tmp_path: Path) -> None:
    path = _write_run(tmp_path / 'run', '20240101_000000', _seg_lines())
    assert [p.name for p in plot_logs([path], tmp_path / 'a', keys=['mIoU'])] == ['metrics.png']
    assert [p.name for p in plot_logs([path], tmp_path / 'b', keys=['decode.loss_ce', 'mIoU'])] == ['loss.png',
                                                                                                 'metrics.png']


def test_training_only_log(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    path = _write_run(tmp_path / 'run', '20240101_000000', [line for line in _seg_lines() if 'lr' in line])
    assert load_tool('plot_logs').main([str(path), '--out-dir', str(tmp_path / 'out')]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(tmp_path / 'out' / 'loss.png')]
    assert 'no validation metrics' in captured.err


def test_cli_bad_path(tmp_path: Path, run_tool) -> None:
    result = run_tool(TOOL, tmp_path / 'missing', '--out-dir', tmp_path / 'out', check=False, timeout=120)
    assert result.returncode != 0
    assert 'error: no such file or directory' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case', ['empty_dir', 'no_records', 'bad_key', 'no_plottable'])
def test_errors(tmp_path: Path, case: str, capsys: pytest.CaptureFixture, load_tool) -> None:
    target = tmp_path / 'work'
    args = ['--out-dir', str(tmp_path / 'out')]
    if case == 'empty_dir':
        target.mkdir()
    elif case == 'no_records':
        target = tmp_path / 'log.json'
        target.write_text('not json\n\n[1, 2]\n')
    elif case == 'bad_key':
        _write_run(target, '20240101_000000', _seg_lines())
        args += ['--keys', 'loss', 'mDice']
    else:
        _write_run(target, '20240101_000000', [{'lr': 0.1, 'iter': 1, 'step': 1}])
    assert load_tool('plot_logs').main([str(target), *args]) == 1
    expected = {'empty_dir': 'no json scalar logs', 'no_records': 'holds no json scalar records',
                'bad_key': "no such key in the logs: ['mDice']", 'no_plottable': 'nothing to plot'}[case]
    assert expected in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
