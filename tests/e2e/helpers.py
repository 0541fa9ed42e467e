"""Running our tools as a user would, and pointing the demo configs at tiny synthetic datasets."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_tool(*args, check=True, timeout=600):
    """Run ``python tools/...`` from the repo root and return the completed process (output captured)."""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}')
    return proc


def seg_options(data_root, **extra):
    opts = {f'{loader}.dataset.data_root': data_root for loader in
            ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    opts.update({'train_dataloader.batch_size': 2, 'val_dataloader.batch_size': 2,
                 'test_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
                 'val_dataloader.num_workers': 0, 'test_dataloader.num_workers': 0,
                 'train_dataloader.persistent_workers': False, 'val_dataloader.persistent_workers': False,
                 'test_dataloader.persistent_workers': False})
    opts.update(extra)
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


def det_options(data_root, **extra):
    ann = f'{data_root}/annotations/instances_val2017.json'
    return seg_options(f'{data_root}/', **{'val_evaluator.ann_file': ann, 'test_evaluator.ann_file': ann,
                                          **extra})
