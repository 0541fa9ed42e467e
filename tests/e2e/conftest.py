"""Tiny synthetic datasets shared by the end-to-end tests."""
import pytest

from convnextv2_dense.data import make_ade_demo, make_coco_demo


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    return make_ade_demo(root, num_train=8, num_val=4, size=64, seed=1, log=None).data_root


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    return make_coco_demo(root, num_train=4, num_val=3, size=96, seed=1, log=None).data_root



@pytest.fixture(scope='session')
def seg_checkpoint(tmp_path_factory, ade_root):
    """The demo UperNet trained for 2 iterations through tools/train.py: iter_2.pth (a real mmengine
    checkpoint, with dataset_meta); its folder holds last_checkpoint too."""
    from .helpers import run_tool, seg_options
    work_dir = tmp_path_factory.mktemp('seg_checkpoint')
    run_tool('tools/train.py', 'configs/demo/upernet_convnextv2_atto_demo.py', '--work-dir', work_dir,
             *seg_options(ade_root, **{'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
                                       'default_hooks.checkpoint.interval': 2}))
    return work_dir / 'iter_2.pth'


@pytest.fixture(scope='session')
def det_checkpoint(tmp_path_factory, coco_root):
    """The demo Mask R-CNN trained for one epoch of the tiny split (one iteration)."""
    from .helpers import det_options, run_tool
    work_dir = tmp_path_factory.mktemp('det_checkpoint')
    run_tool('tools/train.py', 'configs/demo/mask-rcnn_convnextv2_atto_demo.py', '--work-dir', work_dir,
             *det_options(coco_root, **{'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
                                        'default_hooks.checkpoint.interval': 1}))
    return work_dir / 'epoch_1.pth'
