"""What ``tools/train.py`` and ``tools/test.py`` share: arguments, config loading and CPU fall-backs.

The options are those of mmseg's and mmdet's own tools, so muscle memory carries over.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Any

import torch


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='where logs, checkpoints and results go '
                        '(default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. model.backbone.init_cfg.checkpoint=PATH')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher for distributed runs')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace) -> Any:
    """Read the config, apply ``--cfg-options``, the work dir, the launcher and the CPU fall-backs."""
    import convnextv2_dense  # noqa: F401  (registers our classes before the runner builds anything)
    from mmengine.config import Config

    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        adapt_to_cpu(cfg)
    return cfg


def adapt_to_cpu(cfg: Any) -> None:
    """Make a GPU config run on CPUs: gloo instead of NCCL, BN instead of SyncBN, no AMP, no pinning.

    This is what lets ``tools/dist_train.sh`` try a multi-process run on a laptop.
    """
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.launcher != 'none':
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None)
    _replace_sync_bn(cfg.model)
    optim = cfg.get('optim_wrapper')
    if optim is not None and optim.get('type') == 'AmpOptimWrapper':
        optim.type = 'OptimWrapper'
        for key in ('dtype', 'loss_scale'):
            optim.pop(key, None)


def _replace_sync_bn(node: Any) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def task_of(cfg: Any) -> str:
    """``'seg'`` for mmseg configs, ``'det'`` for mmdet ones (from ``default_scope``)."""
    scope = cfg.get('default_scope')
    if scope == 'mmseg':
        return 'seg'
    if scope == 'mmdet':
        return 'det'
    raise SystemExit(f"error: default_scope must be 'mmseg' or 'mmdet', got {scope!r}")


def build_runner(cfg: Any) -> Any:
    """``Runner.from_cfg``, or the registered runner type when the config names one."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if cfg.launcher == 'pytorch' and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        # mmengine's init_dist calls torch.cuda.set_device, which a CPU build lacks; with the process
        # group already up (torchrun's env:// variables), the runner skips it.
        torch.distributed.init_process_group(backend='gloo')
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def shut_down_distributed() -> None:
    """Tear the process group down before exit, so gloo's threads don't abort the process at shutdown."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
