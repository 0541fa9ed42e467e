"""Hooks that stop a run with a named error where mmengine would go on silently.

- :class:`NonFiniteLossHook`: a NaN or infinite loss stops training at that iteration, before the
  checkpoint hook can save the spoiled weights; the last checkpoint written stays the newest.
- :class:`CheckpointMatchHook`: a checkpoint that does not fit the model (another arch, a head with
  another number of classes) is refused before it is loaded; mmengine only logs a warning and evaluates
  a partly random model.

``tools/train.py`` and ``tools/test.py`` register them on their runner; a config can add them as
``custom_hooks=[dict(type='NonFiniteLossHook')]``.
"""
from __future__ import annotations

import math
import os.path as osp
import re
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop

from ..weights.io import abbreviate


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the iteration and the losses."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model built from the config; the message names them."""


class NonFiniteLossHook(Hook):
    """Stop training at the first iteration whose loss is not finite.

    On several processes the verdict is agreed on by all of them, so they stop together.
    """

    priority = 'ABOVE_NORMAL'  # before CheckpointHook (VERY_LOW) can save this iteration's weights

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if not outputs:
            return
        losses = {k: v for k, v in outputs.items() if 'loss' in k}
        total = losses.get('loss', sum(losses.values()) if losses else 0.0)
        bad = not math.isfinite(float(total))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from mmengine.dist import all_reduce
            flag = torch.tensor(float(bad), device=total.device if isinstance(total, torch.Tensor) else 'cpu')
            all_reduce(flag, op='sum')
            bad = bool(flag.item())
        if not bad:
            return
        shown = ', '.join(f'{k}={float(v):.4g}' for k, v in losses.items()) or 'loss not finite on another process'
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        last = open(pointer).read().strip() if osp.isfile(pointer) else runner.message_hub.get_info('last_ckpt')
        kept = f'the last checkpoint, {last}, is kept' if last else 'no checkpoint had been written yet'
        epoch = f' (epoch {runner.epoch + 1})' if isinstance(runner.train_loop, EpochBasedTrainLoop) else ''
        raise NonFiniteLossError(f'iteration {runner.iter + 1}{epoch}: the loss is not finite ({shown}); '
                                 f'training stopped, {kept}')


class CheckpointMatchHook(Hook):
    """Refuse a checkpoint whose tensors are missing from, or shaped unlike, the model's.

    Args:
        allow_unexpected (bool): Accept checkpoint tensors the model lacks (a dropped auxiliary head).
            Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_unexpected: bool = True) -> None:
        self.allow_unexpected = allow_unexpected

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        model = runner.model
        if is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        own = model.state_dict()
        problems = []
        missing = [k for k in own if k not in state]
        if missing:
            problems.append(f'missing {abbreviate(missing)}')
        unexpected = [k for k in state if k not in own]
        if unexpected and not self.allow_unexpected:
            problems.append(f'unexpected {abbreviate(unexpected)}')
        shapes = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
        if shapes:
            problems.append('shaped differently ' + abbreviate(shapes, limit=4))
        if problems:
            hint = (' (a head with another number of classes than the config?)'
                    if shapes and all(_differs_in_first_dim(state[k], own[k]) for k in _keys(shapes)) else '')
            source = runner.cfg.get('load_from') or 'the checkpoint'
            raise CheckpointMismatchError(f'{source} does not fit the model built from the config{hint}: '
                                          + '; '.join(problems))


def _keys(shapes: list[str]) -> list[str]:
    return [s.split(':', 1)[0] for s in shapes]


def _differs_in_first_dim(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and a.dim() > 0 and a.shape[1:] == b.shape[1:]
