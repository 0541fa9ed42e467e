"""Every way a checkpoint reaches our tools obeys one rule, and what our training writes reads anywhere.

A pickle that would run code is refused through ``tools/test.py`` (a path and an http URL), ``load_from``
and ``--resume`` with the same message naming ``--trust-checkpoint``; a checkpoint written by
``tools/train.py`` is read by ``torch.load``'s default and by mmseg's and mmdet's inferencers in a fresh
interpreter that has not imported us.
"""
import functools
import http.server
import os
import subprocess
import sys
import threading

import pytest
import torch

from .helpers import REPO, run_tool, seg_options

CONFIG = 'configs/demo/upernet_convnextv2_atto_demo.py'
PAYLOAD = '''
import os, sys, torch
class RunsShell:
    def __reduce__(self):
        return os.system, ('touch ' + sys.argv[2],)
torch.save({'state_dict': {}, 'meta': RunsShell()}, sys.argv[1])
'''


@pytest.fixture
def evil(tmp_path):
    """``evil.pth``, whose unpickling runs ``touch MARKER`` (written by a script, so no test class is named)."""
    path, marker = tmp_path / 'evil.pth', tmp_path / 'MARKER'
    subprocess.run([sys.executable, '-c', PAYLOAD, str(path), str(marker)], check=True)
    return path, marker


def assert_refused(proc, source, marker):
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert f'refused to load {source}' in lines[0] and 'system' in lines[0]
    assert 'If you trust this file, load it with --trust-checkpoint' in lines[0]
    assert not marker.exists()


def test_tools_test_refuses_a_malicious_file(evil, ade_root, tmp_path):
    path, marker = evil
    proc = run_tool('tools/test.py', CONFIG, path, '--work-dir', tmp_path / 'wd', *seg_options(ade_root), check=False)
    assert_refused(proc, path, marker)


def test_tools_test_refuses_a_malicious_url(evil, ade_root, tmp_path, monkeypatch):
    path, marker = evil
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv('CONVNEXTV2_CACHE', str(tmp_path / 'cache'))
    url = f'http://127.0.0.1:{server.server_address[1]}/evil.pth'
    try:
        proc = run_tool('tools/test.py', CONFIG, url, '--work-dir', tmp_path / 'wd', *seg_options(ade_root),
                        check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert_refused(proc, url, marker)


def test_load_from_refuses_a_malicious_file(evil, ade_root, tmp_path):
    path, marker = evil
    proc = run_tool('tools/train.py', CONFIG, '--work-dir', tmp_path / 'wd',
                    *seg_options(ade_root, load_from=path, **{'train_cfg.max_iters': 1}), check=False)
    assert_refused(proc, path, marker)


def test_resume_refuses_a_malicious_file(evil, ade_root, tmp_path):
    path, marker = evil
    proc = run_tool('tools/train.py', CONFIG, '--work-dir', tmp_path / 'wd', '--resume', path,
                    *seg_options(ade_root, **{'train_cfg.max_iters': 1}), check=False)
    assert_refused(proc, path, marker)


def test_trust_checkpoint_unpickles_everything(evil, ade_root, tmp_path):
    # the switch the message names does what it says (the file then fails as a model checkpoint)
    path, marker = evil
    proc = run_tool('tools/test.py', CONFIG, path, '--trust-checkpoint', '--work-dir', tmp_path / 'wd',
                    *seg_options(ade_root), check=False)
    assert marker.exists()
    assert proc.returncode == 1 and 'does not fit the model' in proc.stderr


def test_our_checkpoint_needs_no_allow_list(seg_checkpoint):
    checkpoint = torch.load(seg_checkpoint)  # torch's default: weights_only=True
    assert checkpoint['meta']['iter'] == 2
    assert checkpoint['message_hub']['log_scalars']['train/loss']  # kept, as tensors


INFERENCER = '''
import sys
from mmseg.apis import MMSegInferencer
assert 'convnextv2_dense' not in sys.modules
inferencer = MMSegInferencer(model=sys.argv[1], weights=sys.argv[2], device='cpu')
result = inferencer(sys.argv[3])
print('prediction', tuple(result['predictions'].shape))
'''


def test_mmseg_inferencer_reads_our_checkpoint(seg_checkpoint, ade_root, tmp_path):
    image = next((ade_root / 'images' / 'validation').iterdir())
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-c', INFERENCER, str(REPO / CONFIG), str(seg_checkpoint),
                           str(image)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'prediction (64, 64)' in proc.stdout
