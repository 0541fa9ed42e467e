"""The demo recipes really learn: a reduced run of each, judged by its own logs.

Segmentation: after 250 iterations the validation mIoU must clearly beat any model that predicts only
the background (at most 20: one class of five right; the untrained model scores about 17.6), and the
training loss must fall well below its start. Detection, from scratch, six short epochs (72 iterations):
the loss must fall well below its start and box and mask AP50 must leave zero (about 0.32 and 0.45 here;
exactly 0.0 when mmcv's RoIAlign was fed channels-last maps, a bug a falling loss did not reveal).
"""
import glob
import json

import pytest

from convnextv2_dense.data import make_ade_demo, make_coco_demo

from .helpers import det_options, seg_options

pytestmark = pytest.mark.slow  # minutes of training on a CPU


def scalars(work_dir):
    (log,) = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_loss(records, first: bool, n: int = 3):
    losses = [r['loss'] for r in records if 'loss' in r]
    return sum(losses[:n] if first else losses[-n:]) / n


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('learn')
    ade = make_ade_demo(root / 'ade', num_train=64, num_val=16, size=128, seed=3, log=None).data_root
    coco = make_coco_demo(root / 'coco', num_train=48, num_val=8, size=128, seed=3, log=None).data_root
    return ade, coco


def test_segmentation_demo_beats_the_untrained_model(demo_data, tmp_path, run_tool):
    ade, _ = demo_data
    run_tool('tools/train.py', 'configs/demo/upernet_convnextv2_atto_demo.py', '--work-dir', tmp_path,
             *seg_options(ade, **{'train_cfg.max_iters': 250, 'train_cfg.val_interval': 250,
                                  'train_dataloader.batch_size': 8, 'param_scheduler.1.end': 250,
                                  'default_hooks.checkpoint.interval': 250}))
    records = scalars(tmp_path)
    (val,) = [r for r in records if 'mIoU' in r]
    background_only_ceiling = 100 / 5
    assert val['mIoU'] > background_only_ceiling + 10, val
    assert mean_loss(records, first=False) < 0.6 * mean_loss(records, first=True)


def test_detection_demo_learns_to_find_the_shapes(demo_data, tmp_path, run_tool):
    _, coco = demo_data
    epochs = 6
    run_tool('tools/train.py', 'configs/demo/mask-rcnn_convnextv2_atto_demo.py', '--work-dir', tmp_path,
             *det_options(coco, **{'train_cfg.max_epochs': epochs, 'train_cfg.val_interval': epochs,
                                   'train_dataloader.batch_size': 4, 'default_hooks.logger.interval': 2,
                                   'default_hooks.checkpoint.interval': epochs,
                                   'param_scheduler.1.milestones': f'[{epochs}]'}))
    records = scalars(tmp_path)
    assert mean_loss(records, first=False) < 0.75 * mean_loss(records, first=True)
    (val,) = [r for r in records if 'coco/segm_mAP' in r]
    assert val['coco/bbox_mAP_50'] > 0.1 and val['coco/segm_mAP_50'] > 0.15, val
