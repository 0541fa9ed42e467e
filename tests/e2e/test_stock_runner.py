"""The leaf configs alone bring in our package: what mmseg's and mmdet's own tools/train.py do
(``Config.fromfile`` then ``Runner.from_cfg``), in a fresh interpreter that never imports convnextv2_dense."""
import subprocess
import sys

import pytest
import torch

from .helpers import REPO, det_options, seg_options

SCRIPT = '''
import sys
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
import argparse
parser = argparse.ArgumentParser()
parser.add_argument('config')
parser.add_argument('work_dir')
parser.add_argument('--cfg-options', nargs='+', action=DictAction)
args = parser.parse_args()
assert 'convnextv2_dense' not in sys.modules
cfg = Config.fromfile(args.config)  # its custom_imports brings the package in
assert 'convnextv2_dense' in sys.modules
cfg.merge_from_dict(args.cfg_options)
cfg.work_dir = args.work_dir
Runner.from_cfg(cfg).train()
'''


@pytest.mark.slow
@pytest.mark.parametrize('task', ['seg', 'det'])
def test_plain_mmengine_runner_finds_our_backbone(task, ade_root, coco_root, tmp_path):
    if task == 'seg':
        config = 'configs/demo/upernet_convnextv2_atto_demo.py'
        options = seg_options(ade_root, **{'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2})
    else:
        config = 'configs/demo/mask-rcnn_convnextv2_atto_demo.py'
        options = det_options(coco_root, **{'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1})
    proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', SCRIPT, config, str(tmp_path), *options],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'gc.freeze: ' in proc.stdout + proc.stderr  # the configs' GcFreezeHook, without our tools/train.py
    checkpoints = list(tmp_path.glob('*.pth'))
    # the configs' SafeCheckpointHook: files torch.load's default (weights_only=True) reads, no allow-list
    assert checkpoints and all(torch.load(path)['meta'] for path in checkpoints)
