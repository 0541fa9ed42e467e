"""One full training iteration of a real mmseg/mmdet model, with our ConvNeXt V2 backbone or HF's.

``model.train_step(data, optim_wrapper)`` of the config's model (``init_cfg=None``, random images and
labels, the config's optimizer wrapper and AMP), timed with the helpers of :mod:`.benchmark`. With
``backbone_impls=('ours', 'hf')`` both backbones run in the same process, in the same heads, with the same
param groups, for a fair comparison. Imports only torch at module level; the mm packages lazily.
"""
from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .benchmark import (HFBackbone, Row, environment, fmt_gib, fmt_num, format_header, free_memory, installed,
                        measure, record, resolve_device, status_of)

HF_BACKBONE_TYPE = 'BenchmarkHFConvNextV2Backbone'  # registered only while a full benchmark runs
HF_CONSTRUCTOR_TYPE = 'BenchmarkHFLayerDecayOptimizerConstructor'


FULL_IMPLS = ('ours', 'ours-compile', 'hf')


@dataclass(frozen=True)
class FullSettings:
    """What :func:`full_benchmark` measures: ``model.train_step`` of an mm config, once per backbone.

    Args:
        config (str): An mmseg or mmdet config file.
        backbone_impls (tuple[str, ...]): 'ours' and/or 'hf' (HF's backbone in the same heads).
            Defaults to ('ours',).
        img_per_gpu (int, optional): Images per step. Defaults to None: 2 (seg) or 4 (det).
        img_size (int, optional): Square image size. Defaults to None: the seg config's crop or 1024.
        boxes (int): Random boxes and masks per detection image. Defaults to 20.
        warmup (int): Untimed steps (at least one). Defaults to 5.
        iters (int): Timed steps. Defaults to 20.
        device (str, optional): Defaults to None: 'cuda' if available, else 'cpu'.
    """

    config: str
    backbone_impls: tuple[str, ...] = ('ours',)
    img_per_gpu: int | None = None
    img_size: int | None = None
    boxes: int = 20
    warmup: int = 5
    iters: int = 20
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.backbone_impls or set(self.backbone_impls) - set(FULL_IMPLS):
            raise ValueError(f'backbone_impls must be among {FULL_IMPLS}, got {self.backbone_impls!r}')
        if min(self.iters, self.warmup) < 1:
            raise ValueError(f'iters and warmup must be >= 1, got {self.iters}, {self.warmup}')


# HF parameter names (under the wrapper's `hf.`) -> ours, for the layer-decay groups; the rest is the head.
_HF_NAMES = ((re.compile(r'^backbone\.hf\.embeddings\.'), 'backbone.downsample_layers.0.'),
             (re.compile(r'^backbone\.hf\.encoder\.stages\.(\d+)\.downsampling_layer\.'),
              r'backbone.downsample_layers.\1.'),
             (re.compile(r'^backbone\.hf\.encoder\.stages\.(\d+)\.layers\.(\d+)\.'), r'backbone.stages.\1.\2.'),
             (re.compile(r'^backbone\.hf\.'), 'backbone.'))


def _hf_layer_decay_constructor() -> type:
    """Our layer-decay constructor for a model with :class:`HFBackbone`: HF names read as ours, so both
    backbones get the same param groups and learning rates."""
    from ..mm.optimizer import ConvNeXtV2LayerDecayOptimizerConstructor

    def ours(name: str) -> str:
        for pattern, replacement in _HF_NAMES:
            name, found = pattern.subn(replacement, name)
            if found:
                break
        return name

    class HFLayerDecayConstructor(ConvNeXtV2LayerDecayOptimizerConstructor):
        def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
            view = SimpleNamespace(backbone=SimpleNamespace(depths=module.backbone.depths, downsample_layers=None),
                                   named_parameters=lambda: ((ours(n), p) for n, p in module.named_parameters()))
            super().add_params(params, view, **kwargs)
    return HFLayerDecayConstructor


def _seg_data(n: int, size: int, num_classes: int) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size), generator=gen))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


def _det_data(n: int, size: int, num_classes: int, boxes: int) -> dict:
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:size, :size]
    inputs, samples = [], []
    for _ in range(n):
        wh = rng.uniform(size / 16, size / 2, (boxes, 2))
        xy = rng.uniform(0, 1, (boxes, 2)) * (size - wh)
        masks = np.zeros((boxes, size, size), dtype=np.uint8)
        for k, ((x0, y0), (w, h)) in enumerate(zip(xy, wh)):  # an ellipse filling each box
            masks[k] = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32),
                                           labels=torch.from_numpy(rng.integers(0, num_classes, boxes)),
                                           masks=BitmapMasks(masks, size, size))
        samples.append(sample)
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)))
    return dict(inputs=inputs, data_samples=samples)


def _amp_name(optim_cfg: dict) -> str:
    if optim_cfg.get('type') != 'AmpOptimWrapper':
        return 'fp32'
    return 'bf16' if str(optim_cfg.get('dtype')) in ('bfloat16', 'torch.bfloat16') else 'fp16'


def _measure_full_row(row: Row, cfg: Any, registry: Any, data: dict, s: FullSettings, device: torch.device) -> None:
    from mmengine.optim import build_optim_wrapper
    model_cfg, optim_cfg = copy.deepcopy(cfg.model), copy.deepcopy(cfg.optim_wrapper)
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.compile = row.impl == 'ours-compile'  # 'ours' is eager whatever the config says
    if row.impl == 'hf':
        keep = {k: v for k, v in model_cfg.backbone.items() if k in ('arch', 'depths', 'dims', 'out_indices',
                                                                      'drop_path_rate')}
        model_cfg.backbone = dict(type=HF_BACKBONE_TYPE, **keep)
        if optim_cfg.get('constructor') == 'ConvNeXtV2LayerDecayOptimizerConstructor':
            optim_cfg.constructor = HF_CONSTRUCTOR_TYPE
    torch.manual_seed(0)
    model = registry.MODELS.build(model_cfg)
    model.init_weights()
    model = model.to(device).train()
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    row.extra.update(params_m=sum(p.numel() for p in model.parameters()) / 1e6, amp=_amp_name(optim_cfg),
                     param_groups=len(optim_wrapper.param_groups))
    record(row, measure(lambda: model.train_step(data, optim_wrapper), s.warmup, s.iters, device))
    x = torch.randn(row.batch, 3, row.input, row.input, device=device)

    def backbone_step() -> None:  # the backbone alone, same input size and precision
        model.zero_grad(set_to_none=True)
        with optim_wrapper.optim_context(model):
            outs = model.backbone(x)
        sum(out.float().mean() for out in outs).backward()
    row.extra['backbone_ms'] = measure(backbone_step, s.warmup, s.iters, device)['ms_per_iter']


def full_benchmark(s: FullSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time ``model.train_step`` of a config's model (random init, random data), once per backbone impl."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    from ..mm.runner_cli import adapt_to_cpu, task_of
    device = resolve_device(s.device)
    MMLogger.get_instance('convnextv2_benchmark', log_level='WARNING')  # no per-parameter init log
    cfg = Config.fromfile(s.config)
    task = task_of(cfg)
    config_amp = _amp_name(cfg.optim_wrapper)
    if device.type == 'cpu':
        cfg.launcher = 'none'
        adapt_to_cpu(cfg)  # no AMP and BN instead of SyncBN on CPU
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    if 'hf' in s.backbone_impls:
        registry.MODELS.register_module(HF_BACKBONE_TYPE, module=HFBackbone, force=True)
        registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(
            HF_CONSTRUCTOR_TYPE, module=_hf_layer_decay_constructor(), force=True)
    crop = cfg.get('crop_size', (512, 512))
    size = s.img_size or (crop[0] if task == 'seg' else 1024)
    n = s.img_per_gpu or (2 if task == 'seg' else 4)
    if task == 'seg':
        cfg.model.data_preprocessor.size = (size, size)
        data = _seg_data(n, size, cfg.model.decode_head.num_classes)
    else:
        data = _det_data(n, size, cfg.model.roi_head.bbox_head.num_classes, s.boxes)
    # mmdet keeps cudnn.benchmark off: the RoI heads see new shapes every step and would re-tune each time.
    cudnn_benchmark = task == 'seg' and bool(cfg.get('env_cfg', {}).get('cudnn_benchmark', False))
    torch.backends.cudnn.benchmark = cudnn_benchmark
    arch = cfg.model.backbone.get('arch', 'custom')
    rows = []
    for impl in s.backbone_impls:
        row = Row(impl, arch, size, n, 'train')
        if not installed(impl):
            row.status = 'not installed'
        else:
            try:
                _measure_full_row(row, cfg, registry, data, s, device)
            except Exception as err:  # one failed row must not lose the others
                row.status = status_of(err)
            free_memory(device)
        log(f'{impl:>5} {s.config}: ' + (f'{row.ms_per_iter:.1f} ms/iter' if row.status == 'ok' else row.status))
        rows.append(row)
    settings = dict(asdict(s), task=task, cudnn_benchmark=cudnn_benchmark, img_size=size, img_per_gpu=n,
                    config_amp=config_amp)
    return dict(kind='full', env=environment(device), settings=settings, rows=[asdict(row) for row in rows])


def format_full_report(report: dict[str, Any]) -> str:
    """Markdown: device, versions and settings, then one row per backbone."""
    s = report['settings']
    objects = f' with {s["boxes"]} random boxes and masks each' if s['task'] == 'det' else ''
    lines = format_header(report['env']) + [
        f'settings: {s["config"]} ({s["task"]}), init_cfg=None, {s["img_per_gpu"]} random images of '
        f'{s["img_size"]}x{s["img_size"]}{objects}, warm-up {s["warmup"]}, {s["iters"]} timed '
        f'model.train_step, cudnn.benchmark {s["cudnn_benchmark"]}, config AMP {s["config_amp"]}'
        + (' (off on CPU)' if report['env']['device_type'] == 'cpu' and s['config_amp'] != 'fp32' else ''),
        '',
        '| backbone | arch | AMP | ms/iter | img/s | peak mem (GiB) | params (M) | param groups '
        '| backbone fwd+bwd (ms) | status |',
        '|---|---|---|---|---|---|---|---|---|---|']
    for r in report['rows']:
        x = r['extra']
        lines.append(f'| {r["impl"]} | {r["arch"]} | {x.get("amp", "-")} | {fmt_num(r["ms_per_iter"], ".1f")} | '
                     f'{fmt_num(r["img_per_s"], ".1f")} | {fmt_gib(r["peak_mem_bytes"])} | '
                     f'{fmt_num(x.get("params_m"), ".1f")} | {x.get("param_groups", "-")} | '
                     f'{fmt_num(x.get("backbone_ms"), ".1f")} | {r["status"]} |')
    return '\n'.join(lines)
