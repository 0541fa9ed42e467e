"""UperNet end to end through tools/train.py and tools/test.py on a tiny synthetic ADE20K split."""
import glob
import os
import re
import subprocess
import sys

import pytest

from .helpers import REPO, seg_options

CONFIG = 'configs/demo/upernet_convnextv2_atto_demo.py'


@pytest.fixture(scope='module')
def trained(tmp_path_factory, ade_root, run_tool):
    work_dir = tmp_path_factory.mktemp('seg_train')
    proc = run_tool('tools/train.py', CONFIG, '--work-dir', work_dir, *seg_options(
        ade_root, **{'train_cfg.max_iters': 4, 'train_cfg.val_interval': 4,
                     'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1}))
    return work_dir, proc


@pytest.mark.slow
def test_train_writes_checkpoints_and_logs_progress(trained):
    work_dir, proc = trained
    assert (work_dir / 'iter_4.pth').is_file()
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [4/4]' in log and 'eta:' in log
    assert re.search(r'mIoU: \d', log)
    # the config's GcFreezeHook froze the start-up objects, once (tools/train.py adds none beside it)
    assert len(re.findall(r'gc.freeze: \d{5,} objects alive before training', log)) == 1


@pytest.mark.slow
def test_test_prints_per_class_table_and_writes_outputs(trained, ade_root, tmp_path, run_tool):
    work_dir, _ = trained
    out, show = tmp_path / 'pred', tmp_path / 'vis'
    proc = run_tool('tools/test.py', CONFIG, work_dir / 'iter_4.pth', '--work-dir', tmp_path / 'wd',
                    '--out', out, '--show-dir', show, *seg_options(ade_root))
    log = proc.stdout + proc.stderr
    assert 'per class results' in log and '|   wall   |' in log
    assert re.search(r'mIoU: \d+\.\d+', log)
    assert len(re.findall(r'gc.freeze: \d{5,} objects alive before testing', log)) == 1
    assert len(glob.glob(str(out / '*.png'))) == 4
    assert glob.glob(str(show / '**' / '*.png'), recursive=True)


@pytest.mark.slow
def test_tta_runs_multi_scale_and_flip(trained, ade_root, tmp_path, run_tool):
    work_dir, _ = trained
    proc = run_tool('tools/test.py', CONFIG, work_dir / 'iter_4.pth', '--tta', '--work-dir', tmp_path,
                    *seg_options(ade_root))
    assert re.search(r'mIoU: \d+\.\d+', proc.stdout + proc.stderr)


@pytest.mark.slow
def test_resume_continues_from_the_saved_iteration(trained, ade_root, tmp_path, run_tool):
    work_dir, _ = trained
    resume_dir = tmp_path / 'resume'
    resume_dir.mkdir()
    for name in ('iter_2.pth',):
        (resume_dir / name).write_bytes((work_dir / name).read_bytes())
    (resume_dir / 'last_checkpoint').write_text(str(resume_dir / 'iter_2.pth'))
    proc = run_tool('tools/train.py', CONFIG, '--work-dir', resume_dir, '--resume', *seg_options(
        ade_root, **{'train_cfg.max_iters': 4, 'train_cfg.val_interval': 4,
                     'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1}))
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/4]' not in log
    assert (resume_dir / 'iter_4.pth').is_file()


def test_missing_config_is_a_clear_error(tmp_path, run_tool):
    proc = run_tool('tools/train.py', tmp_path / 'nope.py', check=False)
    assert proc.returncode != 0 and 'config file not found' in proc.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path, run_tool):
    proc = run_tool('tools/test.py', CONFIG, tmp_path / 'nope.pth', check=False)
    assert proc.returncode != 0 and 'checkpoint not found' in proc.stderr


@pytest.mark.slow
def test_dist_train_and_test_run_on_cpu_with_gloo(ade_root, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS='ignore', PORT='29517')
    opts = seg_options(ade_root, **{'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
                                    'default_hooks.checkpoint.interval': 2})
    proc = subprocess.run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(tmp_path), *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'backend': 'gloo'" in proc.stdout + proc.stderr
    assert "type='GraphedDistributedDataParallel'" in proc.stdout + proc.stderr  # the config's wrapper, on CPUs
    assert (tmp_path / 'iter_2.pth').is_file()
    proc = subprocess.run(['bash', 'tools/dist_test.sh', CONFIG, str(tmp_path / 'iter_2.pth'), '2',
                           '--work-dir', str(tmp_path / 'test'), *seg_options(ade_root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'mIoU: \d+\.\d+', proc.stdout + proc.stderr)
