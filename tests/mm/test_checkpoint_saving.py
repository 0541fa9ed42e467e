"""Atomic writes and checkpoints that torch's weights-only default reads (the e2e tests kill real runs)."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet.registry')
import mmdet.registry  # noqa: E402,F401

import convnextv2_dense  # noqa: E402,F401
from convnextv2_dense.mm import checkpoint_saving  # noqa: E402
from convnextv2_dense.mm.checkpoint_saving import (PARTIAL_SUFFIX, find_unplain, from_plain,  # noqa: E402
                                                   to_plain, write_atomically)
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'sub' / 'iter_2.pth'
    write_atomically(target, b'first')
    write_atomically(target, b'second')
    assert target.read_bytes() == b'second'
    assert sorted(p.name for p in target.parent.iterdir()) == ['iter_2.pth']


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    write_atomically(target, b'complete')

    def disk_full(f):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(checkpoint_saving, '_sync', disk_full)
    with pytest.raises(OSError, match='No space left'):
        write_atomically(target, b'half')
    assert target.read_bytes() == b'complete'
    assert not list(tmp_path.glob(f'*{PARTIAL_SUFFIX}'))


def test_files_get_the_usual_permissions(tmp_path):
    target = tmp_path / 'iter_2.pth'
    write_atomically(target, b'x')
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture
def message_hub_state() -> dict:
    hub = MessageHub.get_instance('checkpoint-saving-test')
    for loss in (np.float64(1.5), np.float32(0.25), 2):
        hub.update_scalar('train/loss', loss)
    hub.update_info('best_score', np.float64(0.625))
    hub.update_info('mask', np.array([1, 0, 1], dtype=np.uint8))
    hub.update_info('last_ckpt', '/w/iter_4.pth')
    return hub.state_dict()


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # torch's default, no allow-list


def test_a_stock_message_hub_needs_an_allow_list(message_hub_state):
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        _roundtrip(message_hub_state)


def test_the_plain_message_hub_is_read_by_weights_only_and_restored(message_hub_state):
    restored = from_plain(_roundtrip(to_plain(message_hub_state)))
    buffer = restored['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    want = message_hub_state['log_scalars']['train/loss']
    assert [a.tolist() for a in buffer.data] == [a.tolist() for a in want.data]
    assert buffer.data[0].dtype == want.data[0].dtype and buffer.max_length == want.max_length
    info = restored['runtime_info']
    assert info['best_score'] == 0.625 and info['last_ckpt'] == '/w/iter_4.pth'
    assert info['mask'].dtype == np.uint8 and info['mask'].tolist() == [1, 0, 1]
    assert restored['resumed_keys'] == message_hub_state['resumed_keys']


def test_to_plain_returns_untouched_containers_as_they_are():
    state_dict = torch.nn.Linear(2, 2).state_dict()  # an OrderedDict with _metadata
    checkpoint = {'state_dict': state_dict, 'meta': {'iter': 3}}
    assert to_plain(checkpoint) is checkpoint


def test_find_unplain_names_the_entry():
    assert find_unplain({'meta': {'a': [1, 2.0, 'x', torch.zeros(1)]}}) is None
    assert find_unplain({'meta': {'a': [1, np.float32(2)]}}) == 'checkpoint.meta.a[1] (numpy.float32)'
