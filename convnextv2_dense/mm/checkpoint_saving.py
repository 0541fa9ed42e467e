"""How our tools write checkpoints: whole or not at all, and readable by torch's weights-only default.

:class:`SafeCheckpointHook` is mmengine's ``CheckpointHook`` with two changes. The shipped configs name it
in ``default_hooks.checkpoint``, and ``tools/train.py`` puts it in place of the stock one for any config:

- Every file (``iter_N.pth``, ``best_*.pth`` and the ``last_checkpoint`` pointer) is written to a hidden
  temporary file in the same folder, flushed to disk and renamed over its name, so a process killed at
  any moment leaves either the old file or the complete new one. A checkpoint beyond ``max_keep_ckpts``
  is deleted only after the new one is complete and ``last_checkpoint`` points to it. Leftover temporary
  files of a killed run are removed when training starts again.
- The message hub's ``HistoryBuffer`` objects and numpy values are stored as tensors and Python numbers,
  so the file holds nothing that ``torch.load``'s default (``weights_only=True``) refuses: mmdet's
  ``DetInferencer(weights=...)``, mmseg's ``MMSegInferencer`` and plain ``torch.load`` read it with no
  allow-list. On resume the hook turns them back into what mmengine expects.
"""
from __future__ import annotations

import contextlib
import glob
import os
import os.path as osp
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer

ATOMIC_BACKEND = 'atomic_local'
PARTIAL_SUFFIX = '.partial'
HISTORY_KEY = '__history_buffer__'
NDARRAY_KEY = '__ndarray__'
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.Tensor, torch.dtype,
                 torch.device, torch.Size)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path (str | PathLike): The file to (over)write; its folder is created if needed.
        data (bytes): The whole content.
    """
    path = osp.abspath(os.fspath(path))
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}')
    try:
        with open(tmp, 'xb') as f:
            f.write(data)
            _sync(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every file system allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with :func:`write_atomically` for every write."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        write_atomically(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        write_atomically(filepath, obj.encode(encoding))


class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose files are complete whenever they exist and need no pickle allow-list.

    Takes the arguments of mmengine's ``CheckpointHook``. With no ``backend_args`` and a local
    ``out_dir``, files are written by :class:`AtomicLocalBackend`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        out_dir = kwargs.get('out_dir') or ''
        if kwargs.get('backend_args') is None and kwargs.get('file_client_args') is None and '://' not in out_dir:
            kwargs['backend_args'] = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, **kwargs)

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        folders = {str(self.out_dir), runner.work_dir}  # checkpoints, and the last_checkpoint pointer
        if is_main_process() and '://' not in str(self.out_dir):
            for leftover in sorted({p for f in folders for p in glob.glob(osp.join(f, f'.*{PARTIAL_SUFFIX}'))}):
                os.remove(leftover)
                runner.logger.info(f'removed {leftover}, a checkpoint whose writing was interrupted')

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in ('meta', 'message_hub'):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])
        where = find_unplain(checkpoint)
        if where is not None:
            runner.logger.warning(f'checkpoint entry {where} is not a tensor, container or plain value: the '
                                  'file will need safe_checkpoint_loading (or trust) to be read')

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in ('meta', 'message_hub'):
            if key in checkpoint:
                checkpoint[key] = from_plain(checkpoint[key])

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        # mmengine's order, except that the outdated file goes only once the new one and the pointer
        # to it are on disk, and the pointer is written atomically.
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_atomically(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
                self.file_backend.rmtree(path)


def to_plain(obj: Any) -> Any:
    """``HistoryBuffer`` and numpy arrays to tagged dicts of tensors, numpy scalars to Python numbers.

    Containers without such values are returned as they are (the same object).
    """
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {HISTORY_KEY: dict(log_history=_array_to_tensor(log), count_history=_array_to_tensor(count),
                                  max_length=obj.max_length)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype.kind in 'biuf':
        return {NDARRAY_KEY: _array_to_tensor(obj)}
    return _map_container(obj, to_plain)


def from_plain(obj: Any) -> Any:
    """The inverse of :func:`to_plain` (numpy scalars stay Python numbers)."""
    if isinstance(obj, dict) and len(obj) == 1 and HISTORY_KEY in obj:
        state = obj[HISTORY_KEY]
        return HistoryBuffer(state['log_history'].numpy(), state['count_history'].numpy(), state['max_length'])
    if isinstance(obj, dict) and len(obj) == 1 and NDARRAY_KEY in obj:
        return obj[NDARRAY_KEY].numpy()
    return _map_container(obj, from_plain)


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def _map_container(obj: Any, fn: Any) -> Any:
    if type(obj) in (dict, OrderedDict):
        items = [(k, fn(v)) for k, v in obj.items()]
        if all(new is obj[k] for k, new in items):
            return obj
        out = type(obj)(items)
        if hasattr(obj, '_metadata'):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        values = [fn(v) for v in obj]
        return obj if all(a is b for a, b in zip(values, obj)) else type(obj)(values)
    return obj


def find_unplain(obj: Any, where: str = 'checkpoint') -> str | None:
    """The first entry (as ``'meta.x[2]'``) that torch's weights-only loader would refuse, or None."""
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return None
    if type(obj) in (dict, OrderedDict):
        found = (find_unplain(v, f'{where}.{k}') for k, v in obj.items())
    elif type(obj) in _PLAIN_CONTAINERS:
        found = (find_unplain(v, f'{where}[{i}]') for i, v in enumerate(obj))
    else:
        return f'{where} ({type(obj).__module__}.{type(obj).__qualname__})'
    return next((w for w in found if w is not None), None)
