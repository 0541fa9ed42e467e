"""One full training iteration of a real mmseg/mmdet model, with our ConvNeXt V2 backbone or HF's.

``model.train_step(data, optim_wrapper)`` of the config's model (``init_cfg=None``, random images and
labels, the config's optimizer wrapper and AMP), timed with the helpers of :mod:`.benchmark`. With
``backbone_impls=('ours', 'hf')`` both backbones run in the same process, in the same heads, with the same
param groups, for a fair comparison. Imports only torch at module level; the mm packages lazily.

Started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set), every process times the step of its model inside
the config's DDP wrapper (``model_wrapper_cfg``; the ``stock`` row: mmengine's ``MMDistributedDataParallel``),
one GPU each (NCCL; gloo on CPUs), and rank 0 reports.
"""
from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..mm.fast_boxes import STOCK_TYPES as FAST_BOX_STOCK_TYPES
from ..mm.fast_det import STOCK_TYPES as FAST_DET_STOCK_TYPES
from ..mm.fast_heads import STOCK_TYPES as FAST_HEAD_STOCK_TYPES
from .impls import FULL_IMPLS, HFBackbone, installed
from .profiling import format_profile, profile_step, sync_sites
from .sync_ops import operation_files, would_sync_sites
from .timing import (Row, environment, fmt_gib, fmt_num, format_header, free_memory, measure, record, resolve_device,
                     status_of)

HF_BACKBONE_TYPE = 'BenchmarkHFConvNextV2Backbone'  # registered only while a full benchmark runs




@dataclass(frozen=True)
class FullSettings:
    """What :func:`full_benchmark` measures: ``model.train_step`` of an mm config, once per backbone.

    Args:
        config (str): An mmseg or mmdet config file.
        backbone_impls (tuple[str, ...]): Among :data:`~.impls.FULL_IMPLS`: 'stock' (eager, the plain
            block, the stock mm components instead of our fast variants and no CUDA graph), 'ours' (no
            ``torch.compile``, the config's ``fused_block`` and ``cuda_graph``), 'ours-eager' ('ours' without
            the CUDA graph step), 'ours-plain' ('ours' with the plain PyTorch block), 'ours-fused' ('ours'
            with the fused block in every block), 'ours-compile' ('ours' with ``compile=True``), 'hf' (HF's
            backbone in the same heads). Defaults to ('ours',).
        img_per_gpu (int, optional): Images per step. Defaults to None: 2 (seg) or 4 (det).
        img_size (int, optional): Square image size. Defaults to None: the seg config's crop or 1024.
        boxes (int): Random boxes and masks per detection image. Defaults to 20.
        warmup (int): Untimed steps (at least one). Defaults to 5.
        iters (int): Timed steps. Defaults to 20.
        profile (int): Also profile this many steps per backbone (0: no profile). Defaults to 0.
        device (str, optional): Defaults to None: 'cuda' if available, else 'cpu'.
    """

    config: str
    backbone_impls: tuple[str, ...] = ('ours',)
    img_per_gpu: int | None = None
    img_size: int | None = None
    boxes: int = 20
    warmup: int = 5
    iters: int = 20
    profile: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.backbone_impls or set(self.backbone_impls) - set(FULL_IMPLS):
            raise ValueError(f'backbone_impls must be among {FULL_IMPLS}, got {self.backbone_impls!r}')
        if min(self.iters, self.warmup) < 1 or self.profile < 0:
            raise ValueError(f'iters and warmup must be >= 1 and profile >= 0, got {self.iters}, {self.warmup}, '
                             f'{self.profile}')


# our mm variants -> the stock types they derive from; and the options the stock types do not have
STOCK_TYPES: dict[str, str] = {'GraphedEncoderDecoder': 'EncoderDecoder', **FAST_HEAD_STOCK_TYPES,
                               **FAST_DET_STOCK_TYPES, **FAST_BOX_STOCK_TYPES}
NON_STOCK_OPTIONS = ('fused', 'cuda_graph')
FUSED_BLOCK = {'stock': False, 'ours-plain': False, 'ours-fused': True}  # rows that set the backbone's fused_block


def stock_components(cfg: Any) -> Any:
    """A copy of a config dict with our fast mm variants replaced by the stock components they derive from,
    and none of :data:`NON_STOCK_OPTIONS` (AdamW's ``fused``, the segmentor's ``cuda_graph``)."""
    if isinstance(cfg, dict):
        out = type(cfg)({k: stock_components(v) for k, v in cfg.items() if k not in NON_STOCK_OPTIONS})
        if out.get('type') in STOCK_TYPES:
            out['type'] = STOCK_TYPES[out['type']]
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(stock_components(v) for v in cfg)
    return cfg


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


def _build(row: Row, cfg: Any, registry: Any, device: torch.device) -> tuple[nn.Module, Any]:
    """The row's model (random init, on ``device``, training mode) and optimizer wrapper."""
    from mmengine.optim import build_optim_wrapper
    model_cfg, optim_cfg = copy.deepcopy(cfg.model), copy.deepcopy(cfg.optim_wrapper)
    model_cfg.backbone.init_cfg = None
    if row.impl != 'hf':  # each row says whether it compiles, whatever the config's default
        model_cfg.backbone.compile = row.impl == 'ours-compile'
        if row.impl in FUSED_BLOCK:
            model_cfg.backbone.fused_block = FUSED_BLOCK[row.impl]
        if row.impl == 'ours-eager' and 'cuda_graph' in model_cfg:
            model_cfg.cuda_graph = False
    if row.impl == 'stock':
        model_cfg, optim_cfg = stock_components(model_cfg), stock_components(optim_cfg)
    if row.impl == 'hf':
        keep = {k: v for k, v in model_cfg.backbone.items() if k in ('arch', 'depths', 'dims', 'out_indices',
                                                                      'drop_path_rate')}
        model_cfg.backbone = dict(type=HF_BACKBONE_TYPE, **keep)
    torch.manual_seed(0)
    model = registry.MODELS.build(model_cfg)
    model.init_weights()
    model = model.to(device).train()
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    row.extra.update(params_m=sum(p.numel() for p in model.parameters()) / 1e6, amp=_amp_name(optim_cfg),
                     param_groups=len(optim_wrapper.param_groups))
    return model, optim_wrapper


def _wrap_for_ddp(row: Row, cfg: Any, model: nn.Module, device: torch.device) -> nn.Module:
    """What takes the training step: ``model`` itself, or under torchrun ``model`` in the config's DDP wrapper
    (the stock row: mmengine's), as the Runner wraps it."""
    if not _world_size():
        return model
    from mmengine.registry import MODEL_WRAPPERS
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if row.impl == 'stock' or 'type' not in wrapper:
        wrapper = dict(type='MMDistributedDataParallel')
    wrapper.update(module=model, device_ids=[device.index] if device.type == 'cuda' else None,
                   broadcast_buffers=False, find_unused_parameters=False)
    return MODEL_WRAPPERS.build(wrapper)


def _measure_full_row(row: Row, cfg: Any, registry: Any, data: dict, s: FullSettings, device: torch.device) -> None:
    model, optim_wrapper = _build(row, cfg, registry, device)
    stepper = _wrap_for_ddp(row, cfg, model, device)
    record(row, measure(lambda: stepper.train_step(data, optim_wrapper), s.warmup, s.iters, device))
    x = torch.randn(row.batch, 3, row.input, row.input, device=device)

    def backbone_step() -> None:  # the backbone alone, same input size and precision (this process only)
        model.zero_grad(set_to_none=True)
        with optim_wrapper.optim_context(model):
            outs = model.backbone(x)
        sum(out.float().mean() for out in outs).backward()
    row.extra['backbone_ms'] = measure(backbone_step, s.warmup, s.iters, device)['ms_per_iter']


def _world_size() -> int:
    """The process group's size when one is running (under torchrun), else 0."""
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0


def _join_torchrun(device: torch.device) -> torch.device:
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPUs) and take this rank's GPU."""
    import torch.distributed as dist
    if not {'RANK', 'WORLD_SIZE'} <= os.environ.keys() or dist.is_initialized():
        return device
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return device


@dataclass
class FullSetup:
    """A config made ready for :func:`_build`: its registry, one batch of random data and what they are."""
    cfg: Any
    registry: Any
    data: dict
    task: str
    size: int
    n: int
    device: torch.device
    config_amp: str
    cudnn_benchmark: bool


def prepare_full(s: FullSettings) -> FullSetup:
    """Load ``s.config`` for :func:`_build` (CPU adaptations, default scope, HF's backbone registered when a
    row needs it) and make its random batch; sets ``cudnn.benchmark`` as the config's task trains."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    from ..mm.runner_cli import adapt_to_cpu, task_of
    device = _join_torchrun(resolve_device(s.device))
    MMLogger.get_instance('convnextv2_benchmark', log_level='WARNING')  # no per-parameter init log
    cfg = Config.fromfile(s.config)
    task = task_of(cfg)
    config_amp = _amp_name(cfg.optim_wrapper)
    if device.type == 'cpu':
        cfg.launcher = 'pytorch' if _world_size() else 'none'
        adapt_to_cpu(cfg)  # no AMP and BN instead of SyncBN on CPU
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    if 'hf' in s.backbone_impls:
        registry.MODELS.register_module(HF_BACKBONE_TYPE, module=HFBackbone, force=True)
    crop = cfg.get('crop_size', (512, 512))
    size = s.img_size or (crop[0] if task == 'seg' else 1024)
    n = s.img_per_gpu or (2 if task == 'seg' else 4)
    if task == 'seg':
        cfg.model.data_preprocessor.size = (size, size)
        data = _seg_data(n, size, cfg.model.decode_head.num_classes)
    else:
        bbox_head = cfg.model.roi_head.bbox_head  # a list of heads, one per stage, in Cascade R-CNN
        num_classes = (bbox_head[0] if isinstance(bbox_head, (list, tuple)) else bbox_head).num_classes
        data = _det_data(n, size, num_classes, s.boxes)
    # mmdet keeps cudnn.benchmark off: the RoI heads see new shapes every step and would re-tune each time.
    cudnn_benchmark = task == 'seg' and bool(cfg.get('env_cfg', {}).get('cudnn_benchmark', False))
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return FullSetup(cfg, registry, data, task, size, n, device, config_amp, cudnn_benchmark)


def full_benchmark(s: FullSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time ``model.train_step`` of a config's model (random init, random data), once per backbone impl.
    Under torchrun, the report's ``rank`` says which process it is (rank 0 reports); the process group this
    joined is left on return."""
    try:
        return _full_benchmark(s, log)
    finally:
        if _world_size():
            torch.distributed.destroy_process_group()


def _full_benchmark(s: FullSettings, log: Callable[[str], None]) -> dict[str, Any]:
    setup = prepare_full(s)
    cfg, registry, data, device, size, n = setup.cfg, setup.registry, setup.data, setup.device, setup.size, setup.n
    world = _world_size()
    rank = torch.distributed.get_rank() if world else 0
    if rank:
        log = _quiet
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
    # Profiles after every timing: once the profiler has run, kernel launches in the process stay slower.
    for row in rows if s.profile else ():
        if row.status == 'ok':
            try:
                model, optim_wrapper = _build(row, cfg, registry, device)
                stepper = _wrap_for_ddp(row, cfg, model, device)
                def step() -> None:
                    stepper.train_step(data, optim_wrapper)
                row.extra['profile'] = profile_step(step, s.profile, device)
                cuda = device.type == 'cuda'  # off the GPU: the operators that would synchronise on one
                row.extra['profile']['sync_sites'] = sync_sites(step, device) if cuda else would_sync_sites(step)
                row.extra['profile']['sync_sites_source'] = 'cuda' if cuda else 'cpu'
                row.extra['profile']['operation_files'] = operation_files(step)
            except Exception as err:  # the timing stands without its profile
                row.extra['profile_status'] = status_of(err)
            model = optim_wrapper = stepper = None
            free_memory(device)
    settings = dict(asdict(s), task=setup.task, cudnn_benchmark=setup.cudnn_benchmark, img_size=size,
                    img_per_gpu=n, config_amp=setup.config_amp, ddp_processes=world)
    return dict(kind='full', env=environment(device), settings=settings, rows=[asdict(row) for row in rows],
                rank=rank)


def _quiet(line: str) -> None:
    """The log of ranks other than 0."""


def format_full_report(report: dict[str, Any]) -> str:
    """Markdown: device, versions and settings, then one row per backbone."""
    s = report['settings']
    objects = f' with {s["boxes"]} random boxes and masks each' if s['task'] == 'det' else ''
    lines = format_header(report['env']) + [
        f'settings: {s["config"]} ({s["task"]}), init_cfg=None, {s["img_per_gpu"]} random images of '
        f'{s["img_size"]}x{s["img_size"]}{objects}, warm-up {s["warmup"]}, {s["iters"]} timed '
        f'model.train_step, start-up objects frozen out of the garbage collector (GcFreezeHook), '
        f'cudnn.benchmark {s["cudnn_benchmark"]}, config AMP {s["config_amp"]}'
        + (' (off on CPU)' if report['env']['device_type'] == 'cpu' and s['config_amp'] != 'fp32' else '')
        + (f', {s["ddp_processes"]} process(es) under DDP (the config\'s model_wrapper_cfg; stock: '
           f'MMDistributedDataParallel), {s["img_per_gpu"]} images each, rank 0\'s times'
           if s.get('ddp_processes') else ''),
        '',
        '| backbone | arch | AMP | ms/iter | max ms | gc ms | img/s | peak mem (GiB) | peak reserved (GiB) '
        '| params (M) | param groups | backbone fwd+bwd (ms) | status |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in report['rows']:
        x = r['extra']
        lines.append(f'| {r["impl"]} | {r["arch"]} | {x.get("amp", "-")} | {fmt_num(r["ms_per_iter"], ".1f")} | '
                     f'{fmt_num(r["ms_max"], ".1f")} | {fmt_num(r["gc_ms"], ".1f")} | '
                     f'{fmt_num(r["img_per_s"], ".1f")} | {fmt_gib(r["peak_mem_bytes"])} | '
                     f'{fmt_gib(r["peak_reserved_bytes"])} | {fmt_num(x.get("params_m"), ".1f")} | '
                     f'{x.get("param_groups", "-")} | '
                     f'{fmt_num(x.get("backbone_ms"), ".1f")} | {r["status"]} |')
    for r in report['rows']:
        if 'profile' in r['extra']:
            lines += ['', *format_profile(f'{r["impl"]} {s["config"]}', r['extra']['profile'])]
        elif 'profile_status' in r['extra']:
            lines += ['', f'profile of {r["impl"]} {s["config"]}: {r["extra"]["profile_status"]}']
    return '\n'.join(lines)
