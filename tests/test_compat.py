"""convnextv2_dense.compat: the torch floor, graph-capture detection and the checkpoint reader on old torch.

Runs on the newest torch (``make test``) and on the floor torch (``make test-floor``); the torch < 2.6
reader is also exercised on a new torch by forcing its path.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from convnextv2_dense import compat

REPO = Path(__file__).resolve().parents[1]


class Placeholder:
    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        pass


class RunsCode:
    def __init__(self, marker: str, via_os: bool = True) -> None:
        self.marker, self.via_os = marker, via_os

    def __reduce__(self):
        if self.via_os:
            return os.system, (f'touch {self.marker}',)
        return subprocess.call, (['touch', self.marker],)


@pytest.mark.parametrize('version', ['2.0.1', '1.13.1+cu117', '2.0.0a0+gitabc'])
def test_a_torch_below_the_floor_is_refused_naming_both_versions(version):
    with pytest.raises(ImportError, match=rf'needs torch>=2\.1, but torch {version.replace("+", "[+]")} is installed'):
        compat.check_torch_version(version)


@pytest.mark.parametrize('version', ['2.1.0', '2.1.0+cu121', '2.13.0a0+git1234', '3.0.0'])
def test_supported_versions_pass(version):
    compat.check_torch_version(version)


def test_an_unreadable_version_is_named():
    with pytest.raises(ValueError, match="cannot read a version number from 'nightly'"):
        compat.version_tuple('nightly')


def test_importing_the_models_with_an_old_torch_fails_naming_the_versions():
    code = "import torch; torch.__version__ = '2.0.1'; from convnextv2_dense import ConvNeXtV2"
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0
    assert 'ImportError: convnextv2_dense needs torch>=2.1, but torch 2.0.1 is installed' in done.stderr


def test_floor_matches_the_declared_requirement():
    runtime = (REPO / 'requirements' / 'runtime.txt').read_text().splitlines()
    floor = '.'.join(map(str, compat.MIN_TORCH))
    assert f'torch>={floor}' in runtime
    pinned = [line.split('#')[0].strip() for line in (REPO / 'requirements' / 'floor.txt').read_text().splitlines()]
    assert f'torch=={floor}.0' in pinned


def test_nothing_is_captured_when_code_just_runs():
    assert compat.is_capturing() is False
    assert compat.is_compiling() is False


def test_jit_tracing_is_seen():
    seen = []

    def fn(x):
        seen.append(compat.is_capturing())
        return x + 1

    torch.jit.trace(fn, torch.zeros(2), check_trace=False)
    assert seen == [True]


def test_fx_tracing_is_seen():
    seen = []

    class Module(torch.nn.Module):
        def forward(self, x):
            seen.append(compat.is_capturing())
            return x + 1

    torch.fx.symbolic_trace(Module())
    assert seen == [True]


def test_dynamo_tracing_is_seen():
    def fn(x):
        return x + 1 if compat.is_capturing() else x - 1

    assert torch.compile(fn, backend='eager')(torch.zeros(1)).item() == 1.0
    assert fn(torch.zeros(1)).item() == -1.0


@pytest.fixture(params=['this torch', 'torch < 2.6 path'])
def reader(request, monkeypatch):
    if request.param == 'torch < 2.6 path':
        monkeypatch.setattr(compat, 'TORCH', (2, 1))
    return request.param


def test_training_objects_become_placeholders_and_tensors_stay(reader, tmp_path):
    path = tmp_path / 'ckpt.pth'
    weight = torch.randn(3, 2)
    torch.save({'state_dict': OrderedDict(w=weight), 'args': argparse.Namespace(lr=0.1), 'epoch': 3,
                'param': torch.nn.Parameter(torch.ones(2))}, path)
    loaded = compat.load_replacing_objects(str(path), Placeholder)
    torch.testing.assert_close(loaded['state_dict']['w'], weight)
    assert isinstance(loaded['state_dict'], OrderedDict)
    assert isinstance(loaded['args'], Placeholder) and loaded['epoch'] == 3
    assert isinstance(loaded['param'], torch.nn.Parameter)


def test_a_pickle_that_would_run_code_through_os_is_refused_naming_it(reader, tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'w': torch.zeros(1), 'payload': RunsCode(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL posix\.system'):
        compat.load_replacing_objects(str(path), Placeholder)
    assert not marker.exists()


def test_a_pickle_that_would_run_code_elsewhere_gets_a_placeholder(reader, tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'w': torch.zeros(1), 'payload': RunsCode(str(marker), via_os=False)}, path)
    loaded = compat.load_replacing_objects(str(path), Placeholder)
    assert not marker.exists()
    assert isinstance(loaded['payload'], Placeholder) and loaded['payload'].args == (['touch', str(marker)],)


def test_old_torch_reader_refuses_to_set_state_on_an_allowed_class():
    # GLOBAL collections.OrderedDict (the class itself), then BUILD {'x': 1} on it: would patch the class.
    raw = b'\x80\x02ccollections\nOrderedDict\nq\x00}q\x01X\x01\x00\x00\x00xq\x02K\x01sb.'
    with pytest.raises(pickle.UnpicklingError, match='sets the state of a type'):
        compat._RestrictedPickle((), Placeholder).load(io.BytesIO(raw))
    assert not hasattr(OrderedDict, 'x')


def test_safe_globals_is_a_list_on_every_torch():
    assert isinstance(compat.safe_globals(), list)


class Tally:
    """A plain class a caller allows: built with ``__new__``, its ``__dict__`` set from the pickle."""

    def __init__(self, counts):
        self.counts = counts


def test_allowed_globals_are_built_and_their_state_set(reader, tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'w': torch.arange(3.0), 'tally': Tally([1, 2])}, path)
    loaded = compat.load_weights_only(str(path), 'cpu', [Tally])
    assert isinstance(loaded['tally'], Tally) and loaded['tally'].counts == [1, 2]
    torch.testing.assert_close(loaded['w'], torch.arange(3.0))


def test_an_allowed_global_under_another_name_stands_in_for_it(reader, tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'args': argparse.Namespace(lr=0.1)}, path)
    loaded = compat.load_weights_only(str(path), 'cpu', [(Tally, 'argparse.Namespace')])
    assert isinstance(loaded['args'], Tally) and loaded['args'].lr == 0.1


def test_a_global_outside_the_allow_list_is_refused_naming_it(reader, tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'w': torch.zeros(1), 'args': argparse.Namespace(lr=0.1),
                'payload': RunsCode(str(marker), via_os=False)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL argparse\.Namespace|GLOBAL subprocess'):
        compat.load_weights_only(str(path), 'cpu', [Tally])
    assert not marker.exists()
