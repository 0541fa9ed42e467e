"""Resuming mmengine checkpoints under torch >= 2.6 through the restricted unpickler, and nothing more.

The checkpoint is shaped like the one mmengine 0.10.7's ``Runner.save_checkpoint`` writes (``meta``,
``state_dict``, ``message_hub``, ``optimizer``, ``param_schedulers``), built here directly because a real
runner is slow to start.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip('mmdet.registry')
import mmdet.registry  # noqa: E402,F401  (mm first, then our package: the usual custom_imports order)

import convnextv2_dense  # noqa: E402,F401
from convnextv2_dense import ConvNeXtV2  # noqa: E402
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402
from mmengine.runner import CheckpointLoader  # noqa: E402

LOSSES = [np.float64(1.25), np.float32(0.75), 0.5]


def mmengine_like_checkpoint() -> dict:
    model = nn.Module()
    model.backbone = ConvNeXtV2('atto', out_indices=(3,))
    model.head = nn.Linear(320, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.head(model.backbone(torch.randn(1, 3, 32, 32))[0].mean((2, 3))).sum().backward()
    optimizer.step()
    hub = MessageHub.get_instance(f'checkpoint-safety-{id(optimizer)}')
    for loss in LOSSES:
        hub.update_scalar('train/loss', loss)
    hub.update_scalar('train/lr', np.float64(1e-3))
    hub.update_info('best_score', np.float32(0.5))  # a bare numpy scalar, as CheckpointHook stores it
    hub.update_info('iter', 3)
    return {
        'meta': {'epoch': 1, 'iter': 3, 'mmengine_version': '0.10.7', 'seed': 42,
                 'dataset_meta': {'classes': ('a', 'b', 'c')}},
        'state_dict': model.state_dict(),
        'message_hub': hub.state_dict(),
        'optimizer': optimizer.state_dict(),
        'param_schedulers': [{'base_lrs': [1e-3], 'last_epoch': 3, 'verbose': False}],
    }


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    ckpt = mmengine_like_checkpoint()
    path = tmp_path_factory.mktemp('resume') / 'iter_3.pth'
    torch.save(ckpt, path)
    return path, ckpt


class RunsShell:
    """Pickles as a call of ``os.system`` (a global a weights-only loader must refuse)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class LooksUp:
    """Pickles as ``getattr(obj, name)``."""

    def __init__(self, obj, name: str) -> None:
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def test_plain_torch_load_refuses_the_checkpoint(checkpoint):
    path, _ = checkpoint
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(path)


def test_mmengine_loads_it_with_history_buffers_intact(checkpoint):
    path, _ = checkpoint
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.data[0].tolist() == [float(x) for x in LOSSES]


def test_history_buffer_statistics_work_after_loading(checkpoint):
    # the pickled statistics methods come back through the restricted getattr
    path, _ = checkpoint
    hub = MessageHub.get_instance('checkpoint-safety-resumed')
    hub.load_state_dict(CheckpointLoader.load_checkpoint(str(path))['message_hub'])
    assert hub.get_scalar('train/loss').mean() == pytest.approx(np.mean(LOSSES))


def test_numpy_scalars_and_meta_survive(checkpoint):
    path, ckpt = checkpoint
    loaded = CheckpointLoader.load_checkpoint(str(path))
    assert (loaded['message_hub']['runtime_info']['best_score'], loaded['meta']) == (np.float32(0.5), ckpt['meta'])


def test_model_and_optimizer_state_survive(checkpoint):
    path, ckpt = checkpoint
    loaded = CheckpointLoader.load_checkpoint(str(path))
    want = [*ckpt['state_dict'].values(), *(s['exp_avg'] for s in ckpt['optimizer']['state'].values())]
    got = [*loaded['state_dict'].values(), *(s['exp_avg'] for s in loaded['optimizer']['state'].values())]
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_pickle_that_runs_a_shell_command_is_refused(tmp_path):
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': RunsShell(f'touch {marker}')}, path)
    with pytest.raises(pickle.UnpicklingError, match=r'(posix|os)\.system'):
        CheckpointLoader.load_checkpoint(str(path))


def test_a_refused_pickle_runs_nothing(tmp_path):
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': RunsShell(f'touch {marker}')}, path)
    with pytest.raises(Exception):
        CheckpointLoader.load_checkpoint(str(path))
    assert not marker.exists()


def test_the_marker_command_does_run_when_unpickled_unsafely(tmp_path):
    # the control for the two tests above: the payload is live
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    torch.save({'meta': RunsShell(f'touch {marker}')}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize('obj, name', [
    ('a string', 'format'),                  # getattr on anything that is not a HistoryBuffer
    (HistoryBuffer, '__init_subclass__'),    # or a private / dunder name of HistoryBuffer
])
def test_getattr_is_refused_outside_history_buffer_methods(tmp_path, obj, name):
    path = tmp_path / 'lookup.pth'
    torch.save({'meta': LooksUp(obj, name)}, path)
    with pytest.raises(pickle.UnpicklingError, match='getattr'):
        CheckpointLoader.load_checkpoint(str(path))


def test_getattr_of_a_public_history_buffer_method_is_allowed(tmp_path):
    # the control: the same pickle shape with a public method loads
    path = tmp_path / 'lookup.pth'
    torch.save({'meta': LooksUp(HistoryBuffer, 'mean')}, path)
    assert CheckpointLoader.load_checkpoint(str(path))['meta'] is HistoryBuffer.mean


def test_torch_weights_only_default_is_left_on(checkpoint):
    # the loader is plugged into mmengine only; torch's own default stays safe for everyone else
    path, _ = checkpoint
    CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
