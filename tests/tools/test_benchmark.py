"""tools/benchmark.py, backbone mode, on the CPU: the table has one row per (impl, mode) and ours matches HF.

A smoke test of the tool, not a timed test: no assertion on any speed.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip('transformers')
pytestmark = pytest.mark.slow  # a minute or more per table on a CPU


def test_backbone_table_on_cpu(tmp_path, capsys, load_tool):
    json_out = tmp_path / 'bench.json'
    argv = ['backbone', '--device', 'cpu', '--impl', 'ours', 'hf', '--arch', 'atto', '--input', '64',
            '--batch', '1', '--warmup', '1', '--iters', '1', '--json-out', str(json_out)]
    assert load_tool('benchmark').main(argv) == 0
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
    assert all(row['ms_max'] >= row['ms_median'] > 0 for row in report['rows'])  # the slowest step: host stalls
    assert all(row['gc_ms'] >= 0 for row in report['rows'])
    assert '| median ms | max ms | gc ms |' in table and 'frozen out of the garbage collector' in table


def test_backbone_profile_comes_after_the_table_on_cpu(tmp_path, capsys, load_tool):
    json_out = tmp_path / 'bench.json'
    argv = ['backbone', '--device', 'cpu', '--impl', 'ours', '--arch', 'atto', '--input', '64', '--batch', '1',
            '--mode', 'train', '--dtype', 'fp32', '--warmup', '1', '--iters', '1', '--profile', '2', '--no-parity',
            '--json-out', str(json_out)]
    assert load_tool('benchmark').main(argv) == 0
    table = capsys.readouterr().out
    assert table.index('| ours | atto | 64 | 1 | train |') < table.index('profile of ours atto 64 x1 train: 2 steps')
    assert '| host op (self time) | ms/step | calls/step |' in table
    profile = json.loads(json_out.read_text())['rows'][0]['extra']['profile']
    assert profile['iters'] == 2 and profile['gpu_busy_ms'] is None
    # a training step of the backbone runs its convolutions forward and backward
    ops = {name for name, _, _ in profile['top_host_ops']}
    assert ops & {'aten::convolution_backward', 'aten::mkldnn_convolution', 'aten::addmm', 'aten::mm'}, ops


def test_backbone_profile_must_not_be_negative():
    from convnextv2_dense.bench.backbone import BackboneSettings
    with pytest.raises(ValueError, match='profile must be >= 0'):
        BackboneSettings(profile=-1)


def test_hf_adapter_hands_over_maps_in_the_input_layout():
    import torch

    from convnextv2_dense.bench.impls import HFBackbone
    model = HFBackbone('atto')
    assert all(f.is_contiguous() for f in model(torch.randn(2, 3, 64, 64)))
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in model(x))


@pytest.mark.parametrize('config, extra', [
    ('configs/demo/upernet_convnextv2_atto_demo.py', ['--img-size', '64']),
    ('configs/demo/mask-rcnn_convnextv2_atto_demo.py', ['--img-size', '128', '--img-per-gpu', '1', '--boxes', '3'])])
def test_full_iteration_table_on_cpu(tmp_path, capsys, config, extra, load_tool):
    pytest.importorskip('mmengine')
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', config, '--backbone-impl', 'ours', 'hf', '--device', 'cpu', '--warmup', '1',
            '--iters', '1', '--json-out', str(json_out), *extra]
    assert load_tool('benchmark').main(argv) == 0
    assert 'model.train_step' in capsys.readouterr().out
    rows = json.loads(json_out.read_text())['rows']
    assert [row['impl'] for row in rows] == ['ours', 'hf']
    assert all(row['status'] == 'ok' and row['ms_per_iter'] > 0 and row['extra']['backbone_ms'] > 0 for row in rows)
    # Same heads and the same layer-decay groups for both backbones, so the rows compare.
    assert rows[0]['extra']['param_groups'] == rows[1]['extra']['param_groups']
    assert rows[0]['extra']['params_m'] == pytest.approx(rows[1]['extra']['params_m'])


def test_full_iteration_profile_and_stock_row_on_cpu(tmp_path, capsys, load_tool):
    pytest.importorskip('mmengine')
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', 'configs/demo/upernet_convnextv2_atto_demo.py', '--img-size', '64',
            '--backbone-impl', 'stock', 'ours', '--device', 'cpu', '--warmup', '1', '--iters', '1', '--profile', '1',
            '--json-out', str(json_out)]
    assert load_tool('benchmark').main(argv) == 0
    table = capsys.readouterr().out
    assert 'profile of stock' in table and 'profile of ours' in table and '| host op (self time) |' in table
    rows = json.loads(json_out.read_text())['rows']
    assert [row['impl'] for row in rows] == ['stock', 'ours'] and all(row['status'] == 'ok' for row in rows)
    profile = rows[0]['extra']['profile']
    assert profile['iters'] == 1 and profile['gpu_busy_ms'] is None and profile['top_host_ops']
    assert all(ms >= 0 and calls > 0 for _, ms, calls in profile['top_host_ops'])


def test_the_detection_step_no_longer_synchronises_where_mmdets_does(tmp_path, capsys, load_tool, monkeypatch):
    """The profile's sync count, on the CPU: the operators of one Mask R-CNN step that would make the host wait
    on a GPU. Ours has none left in the components it replaces; the stock row shows where mmdet's are."""
    pytest.importorskip('mmdet')
    from convnextv2_dense.bench import profiling
    monkeypatch.setattr(profiling, 'TOP', 10_000)  # every line, none summed as 'other'
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', 'configs/demo/mask-rcnn_convnextv2_atto_demo.py', '--img-size', '128',
            '--img-per-gpu', '2', '--boxes', '3', '--backbone-impl', 'stock', 'ours', '--device', 'cpu',
            '--warmup', '1', '--iters', '1', '--profile', '1', '--json-out', str(json_out)]
    assert load_tool('benchmark').main(argv) == 0
    assert 'would synchronise on a GPU' in capsys.readouterr().out
    stock, ours = (row['extra']['profile'] for row in json.loads(json_out.read_text())['rows'])
    assert stock['sync_sites_source'] == ours['sync_sites_source'] == 'cpu'

    def in_replaced(sites) -> dict[str, int]:
        replaced = ('max_iou_assigner.py', 'random_sampler.py', 'base_sampler.py', 'delta_xywh_bbox_coder.py',
                    'bbox_overlaps.py', 'mask_target.py', 'single_level_roi_extractor.py', 'utils/misc.py',
                    'anchor_head.py')
        return {site: n for site, n in sites if any(f'/{name}:' in site for name in replaced)}
    assert in_replaced(stock['sync_sites']), stock['sync_sites']
    assert not in_replaced(ours['sync_sites']), ours['sync_sites']
    total = lambda prof: sum(n for _, n in prof['sync_sites'])  # noqa: E731
    assert total(ours) < total(stock) / 2, (ours['sync_sites'], stock['sync_sites'])
    operators = lambda prof: sum(n for _, n in prof['operation_files'])  # noqa: E731
    assert 0 < operators(ours) < operators(stock)  # fewer launches too (the anchors kept, no per-box loops)


def test_stock_components_undo_our_variants():
    pytest.importorskip('mmseg')
    from mmengine.config import Config

    from convnextv2_dense.bench.full import stock_components
    cfg = Config.fromfile('configs/upernet_convnextv2_base_ade20k.py')
    assert (cfg.model.decode_head.type, cfg.model.auxiliary_head.type) == ('UPerHeadFast', 'FCNHeadFast')
    assert cfg.optim_wrapper.optimizer.fused is True
    model, optim = stock_components(cfg.model), stock_components(cfg.optim_wrapper)
    assert (model.decode_head.type, model.auxiliary_head.type) == ('UPerHead', 'FCNHead')
    assert 'fused' not in optim.optimizer and optim.optimizer.lr == cfg.optim_wrapper.optimizer.lr
    assert (model.type, 'cuda_graph' in model) == ('EncoderDecoder', False)


def test_stock_components_undo_our_detection_variants():
    pytest.importorskip('mmdet')
    from mmengine.config import Config

    from convnextv2_dense.bench.full import stock_components
    model = Config.fromfile('configs/mask-rcnn_convnextv2_base_fpn_3x_coco.py').model
    samplers = lambda m: (m.train_cfg.rpn.sampler.type, m.train_cfg.rcnn.sampler.type)  # noqa: E731
    assigners = lambda m: (m.train_cfg.rpn.assigner.type, m.train_cfg.rcnn.assigner.type)  # noqa: E731
    assert (model.roi_head.mask_head.type, samplers(model)) == ('FCNMaskHeadFast', ('RandomSamplerFast',) * 2)
    assert assigners(model) == ('MaxIoUAssignerFast',) * 2
    stock = stock_components(model)
    assert (stock.roi_head.mask_head.type, samplers(stock)) == ('FCNMaskHead', ('RandomSampler',) * 2)
    assert assigners(stock) == ('MaxIoUAssigner',) * 2
    assert stock.train_cfg.rcnn.sampler.num == model.train_cfg.rcnn.sampler.num == 512
    # the rest of mmdet's assigner settings stay: the RPN's low-quality matches, the RoI head's thresholds
    assert stock.train_cfg.rpn.assigner.match_low_quality and model.train_cfg.rpn.assigner.match_low_quality
    assert model.train_cfg.rcnn.assigner.pos_iou_thr == 0.5
    # every variant in the config, and none left in the stock one
    assert {t for t in config_types(model) if t.endswith('Fast')} == {
        'FCNMaskHeadFast', 'RandomSamplerFast', 'MaxIoUAssignerFast', 'AnchorGeneratorFast',
        'DeltaXYWHBBoxCoderFast', 'BboxOverlaps2DFast', 'SingleRoIExtractorFast', 'RPNHeadFast', 'MaskRCNNFast',
        'StandardRoIHeadFast'}
    assert not [t for t in config_types(stock) if t.endswith('Fast')]
    assert stock.type == 'MaskRCNN'
    assert stock.rpn_head.bbox_coder.target_stds == model.rpn_head.bbox_coder.target_stds


def config_types(cfg) -> list[str]:
    """Every ``type`` in a config tree."""
    if isinstance(cfg, dict):
        own = [cfg['type']] if isinstance(cfg.get('type'), str) else []
        return own + [t for value in cfg.values() for t in config_types(value)]
    if isinstance(cfg, (list, tuple)):
        return [t for value in cfg for t in config_types(value)]
    return []


def test_full_iteration_handles_cascades_list_of_bbox_heads(tmp_path):
    pytest.importorskip('mmdet')
    from convnextv2_dense.bench.full import FullSettings, full_benchmark
    config = 'configs/cascade-mask-rcnn_convnextv2_tiny_fpn_1x_coco.py'
    report = full_benchmark(FullSettings(config, img_per_gpu=1, img_size=64, boxes=2, warmup=1, iters=1,
                                         device='cpu'), log=lambda line: None)
    assert [row['status'] for row in report['rows']] == ['ok']


def test_the_ours_row_runs_eager_even_where_the_config_compiles(tmp_path, monkeypatch, load_tool):
    pytest.importorskip('mmengine')
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError('the ours row compiled')

    monkeypatch.setattr(torch, 'compile', refuse)
    json_out = tmp_path / 'full.json'
    argv = ['full', '--config', 'configs/upernet_convnextv2_atto_ade20k.py', '--backbone-impl', 'ours', '--device', 'cpu',
            '--warmup', '1', '--iters', '1', '--img-size', '64', '--json-out', str(json_out)]
    assert load_tool('benchmark').main(argv) == 0
    assert [row['status'] for row in json.loads(json_out.read_text())['rows']] == ['ok']


def test_full_iteration_under_torchrun_wraps_each_row_in_its_ddp_wrapper(tmp_path):
    import socket
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip('mmseg')
    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    json_out = tmp_path / 'ddp.json'
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port),
         'tools/benchmark.py', 'full', '--config', 'configs/demo/upernet_convnextv2_atto_demo.py',
         '--backbone-impl', 'stock', 'ours', '--img-size', '64', '--warmup', '1', '--iters', '2', '--device', 'cpu',
         '--json-out', str(json_out)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('| backbone |') == 1  # one report, from rank 0
    assert '2 process(es) under DDP' in done.stdout
    report = json.loads(json_out.read_text())
    assert report['settings']['ddp_processes'] == 2
    assert [(row['impl'], row['status']) for row in report['rows']] == [('stock', 'ok'), ('ours', 'ok')]


def test_full_rows_take_the_configs_ddp_wrapper_and_stock_takes_mmengines():
    pytest.importorskip('mmseg')
    from unittest import mock

    from mmengine.config import Config

    from convnextv2_dense.bench import full
    from convnextv2_dense.bench.timing import Row
    cfg = Config.fromfile('configs/upernet_convnextv2_atto_ade20k.py')
    built = []
    with mock.patch('mmengine.registry.MODEL_WRAPPERS.build', side_effect=built.append), \
            mock.patch.object(full, '_world_size', return_value=2):  # as under torchrun
        for impl in ('stock', 'ours', 'hf'):
            full._wrap_for_ddp(Row(impl, 'atto', 64, 2, 'train'), cfg, 'MODEL', full.torch.device('cpu'))
    assert [b['type'] for b in built] == ['MMDistributedDataParallel', 'GraphedDistributedDataParallel',
                                          'GraphedDistributedDataParallel']
    assert all(b['module'] == 'MODEL' and b['device_ids'] is None and not b['broadcast_buffers'] for b in built)


def test_backbone_rows_set_the_fused_block_as_named():
    from convnextv2_dense.bench.impls import build_backbone
    expected = {'ours': None, 'ours-plain': False, 'ours-fused': True, 'ours-matmuls': True, 'ours-bf16-norm': None,
                'ours-compile': None, 'ours-fused-compile': True}
    assert {impl: build_backbone(impl, 'atto').fused_block for impl in expected} == expected


@pytest.mark.parametrize('impl, switch, reader', [('ours-matmuls', 'APPLIED_IN_MATMULS', 'use_fused'),
                                                   ('ours-bf16-norm', 'NORM_IN_BF16', 'norm_in_conv_dtype')])
def test_switched_rows_turn_their_path_on_only_while_they_run(monkeypatch, impl, switch, reader):
    import torch

    from convnextv2_dense.bench.impls import build_backbone
    from convnextv2_dense.models import block, fused
    seen = []
    owner = block if reader == 'use_fused' else fused  # where the block looks the rule up
    monkeypatch.setattr(owner, reader, lambda *args: seen.append(getattr(fused, switch)) or False)
    outs = build_backbone(impl, 'atto')(torch.randn(1, 3, 32, 32))
    assert len(outs) == 4 and seen and all(seen) and getattr(fused, switch) is False
    with pytest.raises(ValueError, match='switch must be one of'):
        with fused.switched('NO_SUCH_SWITCH'):
            pass
