"""What ``tools/train.py`` and ``tools/test.py`` share: arguments, config loading, CPU fall-backs, the
checks and hooks that turn bad input into named errors, and the one-line report of those errors.

The options are those of mmseg's and mmdet's own tools, so muscle memory carries over.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import pickle
import sys
from collections.abc import Callable
from typing import Any

import torch
from mmengine.runner import Runner

from .data_checks import SampleError, check_data_paths, name_failing_samples
from .gc_freeze import GcFreezeHook, has_gc_freeze_hook
from .guards import CheckpointMatchHook, NonFiniteLossError, NonFiniteLossHook

DEBUG_ENV = 'CONVNEXTV2_DEBUG'
TRUST_SWITCH = '--trust-checkpoint'
# Errors that mean bad input (a config, a path, a file, a value): reported on one line, no traceback.
NAMED_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, SyntaxError, pickle.UnpicklingError,
                                                 SampleError, NonFiniteLossError)


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
    parser.add_argument(TRUST_SWITCH, action='store_true',
                        help='unpickle checkpoints completely (weights_only=False): only for files you trust; '
                        'by default only tensors, containers, numpy values and mmengine HistoryBuffers are read')
    parser.add_argument('--debug', action='store_true',
                        help=f'show the traceback of an error (also: {DEBUG_ENV}=1)')


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's ``main``; a bad-input error becomes one ``error: ...`` line and exit status 1."""
    if '--debug' in sys.argv or os.environ.get(DEBUG_ENV, '') not in ('', '0'):
        main()
        return
    try:
        main()
    except NAMED_ERRORS as err:
        print(f'error: {one_line(err)} (--debug shows the traceback)', file=sys.stderr)
        sys.exit(1)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (from a dataloader worker: the original error's last line)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    if 'Original Traceback' in text:
        text = text.strip().splitlines()[-1].split(': ', 1)[-1]
    return ' '.join(text.split()) or type(err).__name__


def load_config(args: argparse.Namespace) -> Any:
    """Read the config, apply ``--cfg-options``, the work dir, the launcher and the CPU fall-backs."""
    import convnextv2_dense  # noqa: F401  (registers our classes before the runner builds anything)
    from mmengine.config import Config

    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    try:
        cfg = Config.fromfile(args.config)
    except SyntaxError as err:
        if err.lineno is None:  # mmengine's own message, naming a base file
            raise
        raise SyntaxError(f'config {args.config}, line {err.lineno}: {err.msg}') from err
    if args.cfg_options:
        try:
            cfg.merge_from_dict(args.cfg_options)
        except TypeError as err:  # an option of another type than the entry it replaces
            raise ValueError(f'--cfg-options: {err}') from err
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
    if cfg.launcher != 'none':  # the config's wrapper (mmengine's DDP by default), on CPU modules
        wrapper = cfg.get('model_wrapper_cfg') or {}
        cfg.model_wrapper_cfg = dict(wrapper, type=wrapper.get('type', 'MMDistributedDataParallel'), device_ids=None)
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


def prepare_training(cfg: Any) -> None:
    """Check data paths; write checkpoints with :class:`SafeCheckpointHook` (atomic, weights-only plain)."""
    check_data_paths(cfg, ('train_dataloader', 'val_dataloader', 'val_evaluator') if cfg.get('val_cfg')
                     else ('train_dataloader',))
    hook = cfg.get('default_hooks', {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook'):
        hook.type = 'SafeCheckpointHook'


def prepare_testing(cfg: Any) -> None:
    """Check the test data paths."""
    check_data_paths(cfg, ('test_dataloader', 'test_evaluator'))


class ToolRunner(Runner):
    """mmengine's ``Runner``, whose datasets name the files of a sample that fails to load."""

    @staticmethod
    def build_dataloader(dataloader: Any, seed: int | None = None, diff_rank_seed: bool = False) -> Any:
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        name_failing_samples(loader.dataset)
        return loader


def build_runner(cfg: Any, mode: str) -> Any:
    """``Runner.from_cfg`` (or the config's ``runner_type``), with our guards for ``mode``.

    Args:
        cfg (Config): The prepared config.
        mode (str): ``'train'`` (stop on a non-finite loss) or ``'test'`` (refuse a checkpoint that does
            not fit the model). Either way the start-up objects are frozen out of the garbage collector's
            passes (:mod:`.gc_freeze`).
    """
    from mmengine.registry import RUNNERS
    if cfg.launcher == 'pytorch' and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        # mmengine's init_dist calls torch.cuda.set_device, which a CPU build lacks; with the process
        # group already up (torchrun's env:// variables), the runner skips it.
        torch.distributed.init_process_group(backend='gloo')
    runner = ToolRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.register_hook(NonFiniteLossHook() if mode == 'train' else CheckpointMatchHook())
    if not has_gc_freeze_hook(runner):  # a config of the user's own, without our schedule bases
        runner.register_hook(GcFreezeHook())
    return runner


def shut_down_distributed() -> None:
    """Tear the process group down before exit, so gloo's threads don't abort the process at shutdown."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
