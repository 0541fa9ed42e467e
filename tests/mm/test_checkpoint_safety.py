"""Reading mmengine checkpoints by the allow-list of ``safe_checkpoint_loading``, local and http(s).

The checkpoint is shaped like the one stock mmengine 0.10.7's ``Runner.save_checkpoint`` writes (``meta``,
``state_dict``, ``message_hub`` with HistoryBuffers and numpy values, ``optimizer``, ``param_schedulers``),
built here directly because a real runner is slow to start (the e2e tests resume real ones).
"""
from __future__ import annotations

import functools
import http.server
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip('mmdet.registry')
import mmdet.registry  # noqa: E402,F401  (mm first, then our package: the usual custom_imports order)

import convnextv2_dense  # noqa: E402,F401
from convnextv2_dense import ConvNeXtV2  # noqa: E402
from convnextv2_dense.mm.checkpoint_safety import (UnsafeCheckpointError,  # noqa: E402
                                                   safe_checkpoint_loading)
from convnextv2_dense.weights.io import CheckpointError  # noqa: E402
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402
from mmengine.runner import CheckpointLoader  # noqa: E402
from mmengine.runner.checkpoint import load_from_http, load_from_local  # noqa: E402

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


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A checkpoint whose unpickling runs ``touch MARKER``, and the marker's path."""
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': RunsShell(f'touch {marker}')}, path)
    return path, marker


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An http server on localhost serving ``tmp_path``; downloads go to a fresh cache."""
    monkeypatch.setenv('CONVNEXTV2_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


@pytest.fixture(params=['this torch', 'torch < 2.6 path'])
def reader(request, monkeypatch):
    """Each reading test runs on this torch's weights-only loader and on the restricted unpickler that
    ``compat.load_weights_only`` uses before torch 2.6 (``make test-floor`` has no mmengine to run them)."""
    if request.param == 'torch < 2.6 path':
        from convnextv2_dense import compat
        monkeypatch.setattr(compat, 'TORCH', (2, 1))
    return request.param


# ------------------------------------------------------------------------------ nothing on by default
def ours_in_torch_allow_list() -> list:
    """Entries of torch's process-wide allow-list that name numpy, mmengine or getattr (torch adds its own)."""
    entries = [e[0] if isinstance(e, tuple) else e for e in torch.serialization.get_safe_globals()]
    return [e for e in entries if getattr(e, '__module__', '').split('.')[0] in ('numpy', 'mmengine')
            or e is getattr or 'getattr' in getattr(e, '__name__', '')]


def test_importing_the_package_changes_no_loader_and_no_allow_list():
    assert CheckpointLoader._get_checkpoint_loader('/some/file.pth') is load_from_local
    assert CheckpointLoader._get_checkpoint_loader('https://host/file.pth') is load_from_http
    assert not ours_in_torch_allow_list()


def test_plain_torch_load_refuses_a_stock_mmengine_checkpoint(checkpoint):
    path, _ = checkpoint
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(path)


def test_the_loaders_come_back_after_the_block(checkpoint):
    with safe_checkpoint_loading():
        assert CheckpointLoader._get_checkpoint_loader('/x.pth') is not load_from_local
    assert CheckpointLoader._get_checkpoint_loader('/x.pth') is load_from_local
    assert CheckpointLoader._get_checkpoint_loader('http://h/x.pth') is load_from_http
    assert not ours_in_torch_allow_list()


# ------------------------------------------------------------------------------ what the allow-list reads
def test_history_buffers_numpy_values_and_tensors_survive(checkpoint, reader):
    path, ckpt = checkpoint
    with safe_checkpoint_loading():
        loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.data[0].tolist() == [float(x) for x in LOSSES]
    assert loaded['message_hub']['runtime_info']['best_score'] == np.float32(0.5)
    assert loaded['meta'] == ckpt['meta']
    want = [*ckpt['state_dict'].values(), *(s['exp_avg'] for s in ckpt['optimizer']['state'].values())]
    got = [*loaded['state_dict'].values(), *(s['exp_avg'] for s in loaded['optimizer']['state'].values())]
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_history_buffer_statistics_work_after_loading(checkpoint, reader):
    # the pickled statistics methods come back through the restricted getattr
    path, _ = checkpoint
    hub = MessageHub.get_instance('checkpoint-safety-resumed')
    with safe_checkpoint_loading():
        hub.load_state_dict(CheckpointLoader.load_checkpoint(str(path))['message_hub'])
    assert hub.get_scalar('train/loss').mean() == pytest.approx(np.mean(LOSSES))


def test_a_stock_checkpoint_is_read_from_an_http_url(checkpoint, served, tmp_path):
    path, ckpt = checkpoint
    (tmp_path / 'good.pth').write_bytes(path.read_bytes())
    with safe_checkpoint_loading():
        loaded = CheckpointLoader.load_checkpoint(f'{served}/good.pth')
    assert loaded['meta'] == ckpt['meta']
    assert (tmp_path / 'cache').is_dir()  # downloaded into our cache, not torch hub's


# ------------------------------------------------------------------------------ what it refuses
def test_a_pickle_that_runs_a_shell_command_is_refused_locally(evil, reader):
    path, marker = evil
    with safe_checkpoint_loading(), pytest.raises(UnsafeCheckpointError) as info:
        CheckpointLoader.load_checkpoint(str(path))
    message = str(info.value)
    assert str(path) in message and 'system' in message
    assert 'If you trust this file, load it with safe_checkpoint_loading(trust=True)' in message
    assert not marker.exists()


def test_a_pickle_that_runs_a_shell_command_is_refused_from_a_url(evil, served):
    path, marker = evil
    url = f'{served}/{path.name}'
    with safe_checkpoint_loading(switch='--trust-checkpoint'), pytest.raises(UnsafeCheckpointError) as info:
        CheckpointLoader.load_checkpoint(url)
    assert url in str(info.value) and 'load it with --trust-checkpoint' in str(info.value)
    assert not marker.exists()


def test_stock_mmengine_runs_the_payload_of_a_url(evil, served):
    # the control for the test above: mmengine's own http loader unpickles with weights_only=False
    path, marker = evil
    CheckpointLoader.load_checkpoint(f'{served}/{path.name}')
    assert marker.exists()


def test_trust_loads_what_the_allow_list_refuses(evil):
    path, marker = evil
    with safe_checkpoint_loading(trust=True):
        CheckpointLoader.load_checkpoint(str(path))
    assert marker.exists()


@pytest.mark.parametrize('obj, name', [
    ('a string', 'format'),                  # getattr on anything that is not a HistoryBuffer
    (HistoryBuffer, '__init_subclass__'),    # or a private / dunder name of HistoryBuffer
])
def test_getattr_is_refused_outside_history_buffer_methods(tmp_path, reader, obj, name):
    path = tmp_path / 'lookup.pth'
    torch.save({'meta': LooksUp(obj, name)}, path)
    with safe_checkpoint_loading(), pytest.raises(UnsafeCheckpointError, match='only public HistoryBuffer'):
        CheckpointLoader.load_checkpoint(str(path))


def test_getattr_of_a_public_history_buffer_method_is_allowed(tmp_path, reader):
    # the control: the same pickle shape with a public method loads
    path = tmp_path / 'lookup.pth'
    torch.save({'meta': LooksUp(HistoryBuffer, 'mean')}, path)
    with safe_checkpoint_loading():
        assert CheckpointLoader.load_checkpoint(str(path))['meta'] is HistoryBuffer.mean


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all\n'])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content):
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with safe_checkpoint_loading(), pytest.raises(CheckpointError, match=f'{path} is not a readable PyTorch'):
        CheckpointLoader.load_checkpoint(str(path))


def test_a_truncated_checkpoint_is_named(checkpoint, reader, tmp_path):
    path = tmp_path / 'cut.pth'
    data = checkpoint[0].read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with safe_checkpoint_loading(), pytest.raises(CheckpointError, match='truncated'):
        CheckpointLoader.load_checkpoint(str(path))
