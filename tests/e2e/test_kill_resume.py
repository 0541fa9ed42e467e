"""SIGKILL a CPU training run between checkpoints and while one is being written; ``--resume`` loses nothing.

The runs are ``tools/train.py`` itself, started by a small wrapper that makes the moment of the kill
deterministic (it blocks at a chosen iteration, or inside the write of a chosen file, after touching a
marker) and, on resume, dumps the state the runner resumed into, to compare with the file it came from.
"""
import os
import signal
import subprocess
import sys
import time

import torch

from .helpers import REPO, seg_options

CONFIG = 'configs/demo/upernet_convnextv2_atto_demo.py'
WRAPPER = r'''
import os, runpy, sys, time
stop, marker, dump = os.environ.get('STOP', ''), os.environ.get('MARKER'), os.environ.get('DUMP')

def block():
    open(marker, 'w').close()
    time.sleep(600)

if stop.startswith('iter:'):  # block before running iteration n + 1
    from mmengine.runner import IterBasedTrainLoop
    n, run_iter = int(stop[5:]), IterBasedTrainLoop.run_iter
    def stopping(self, data_batch):
        if self._iter == n:
            block()
        return run_iter(self, data_batch)
    IterBasedTrainLoop.run_iter = stopping
elif stop.startswith('write:'):  # block inside the write of the named file, its bytes half on disk
    from convnextv2_dense.mm import checkpoint_saving
    name, sync = stop[6:], checkpoint_saving._sync
    def slow(f):
        if os.path.basename(f.name).startswith('.' + name + '.'):
            f.truncate(f.tell() // 2)
            f.flush()
            block()
        sync(f)
    checkpoint_saving._sync = slow
if dump:
    from mmengine.runner import Runner
    resume = Runner.resume
    def dumping(self, filename, *args, **kwargs):
        resume(self, filename, *args, **kwargs)
        import torch
        torch.save({'filename': filename, 'iter': self.iter,
                    'model': {k: v.clone() for k, v in self.model.state_dict().items()},
                    'optimizer': self.optim_wrapper.state_dict(),
                    'schedulers': [s.state_dict() for s in self.param_schedulers],
                    'best_score': self.message_hub.get_info('best_score')}, dump)
    Runner.resume = dumping
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def options(ade_root):
    return seg_options(ade_root, **{'train_cfg.max_iters': 6, 'train_cfg.val_interval': 2,
                                    'default_hooks.checkpoint.interval': 2,
                                    'default_hooks.checkpoint.max_keep_ckpts': 1,
                                    'default_hooks.logger.interval': 1})


def train(work_dir, ade_root, *extra, **env):
    return subprocess.Popen([sys.executable, '-c', WRAPPER, 'tools/train.py', CONFIG, '--work-dir', str(work_dir),
                             *extra, *options(ade_root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONWARNINGS='ignore', **env))


def kill_when_blocked(work_dir, ade_root, stop):
    marker = work_dir.parent / f'{work_dir.name}.blocked'
    proc = train(work_dir, ade_root, STOP=stop, MARKER=str(marker))
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f'the run ended before blocking:\n{proc.stdout.read()[-3000:]}'
        assert time.monotonic() < deadline, 'the run never blocked'
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def resume(work_dir, ade_root):
    dump = work_dir.parent / f'{work_dir.name}.resumed.pth'
    proc = train(work_dir, ade_root, '--resume', DUMP=str(dump))
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    return torch.load(dump, weights_only=False), log


def assert_resumed_what_was_saved(resumed, saved):
    assert resumed['iter'] == saved['meta']['iter']
    assert resumed['model'].keys() == saved['state_dict'].keys()
    assert all(torch.equal(resumed['model'][k], v) for k, v in saved['state_dict'].items())
    got, want = resumed['optimizer'], saved['optimizer']
    assert got['state'].keys() == want['state'].keys() and want['state']
    for i, moments in want['state'].items():
        assert moments.keys() == got['state'][i].keys() == {'step', 'exp_avg', 'exp_avg_sq'}
        assert all(torch.equal(got['state'][i][k], v) for k, v in moments.items())
    assert [g['lr'] for g in got['param_groups']] == [g['lr'] for g in want['param_groups']]
    assert resumed['schedulers'] == saved['param_schedulers']
    assert resumed['best_score'] == saved['message_hub']['runtime_info'].get('best_score')


def test_sigkill_between_checkpoints_then_resume(ade_root, tmp_path):
    work_dir = tmp_path / 'run'
    kill_when_blocked(work_dir, ade_root, 'iter:5')  # iter_4.pth written, iteration 6 not started
    assert (work_dir / 'iter_4.pth').is_file() and not (work_dir / 'iter_2.pth').exists()  # max_keep_ckpts=1
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_4.pth')
    saved = torch.load(work_dir / 'iter_4.pth')
    assert saved['message_hub']['runtime_info']['best_score'] >= 0  # the validation at iteration 2

    resumed, log = resume(work_dir, ade_root)
    assert resumed['filename'] == str(work_dir / 'iter_4.pth')
    assert_resumed_what_was_saved(resumed, saved)
    assert 'resumed epoch: 0, iter: 4' in log and 'Iter(train) [5/6]' in log and 'Iter(train) [4/6]' not in log
    assert (work_dir / 'iter_6.pth').is_file()


def test_sigkill_while_a_checkpoint_is_written_then_resume(ade_root, tmp_path):
    work_dir = tmp_path / 'run'
    kill_when_blocked(work_dir, ade_root, 'write:iter_4.pth')
    assert not (work_dir / 'iter_4.pth').exists()
    partial = list(work_dir.glob('.iter_4.pth.*.partial'))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # half a checkpoint, under another name
    # the previous one survives although max_keep_ckpts=1: it goes only once its successor is complete
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')
    saved = torch.load(work_dir / 'iter_2.pth')

    resumed, log = resume(work_dir, ade_root)
    assert resumed['filename'] == str(work_dir / 'iter_2.pth')
    assert_resumed_what_was_saved(resumed, saved)
    assert 'resumed epoch: 0, iter: 2' in log and 'Iter(train) [3/6]' in log
    assert not list(work_dir.glob('.*.partial'))
    assert (work_dir / 'iter_6.pth').is_file() and not (work_dir / 'iter_4.pth').exists()
