"""Mask R-CNN end to end: tools/train.py, tools/test.py --out, then tools/coco_eval.py on the files."""
import json
import os
import re
import subprocess
import sys

import pytest

from convnextv2_dense.data import DEMO_DET_CLASSES

from .helpers import REPO, det_options

CONFIG = 'configs/demo/mask-rcnn_convnextv2_atto_demo.py'
pytestmark = pytest.mark.slow  # trains Mask R-CNN for an epoch on the CPU
# mmdet's CocoMetric(classwise=True) logs, per IoU type, an AsciiTable headed by these columns and one row
# per class with its AP (or nan).
CLASSWISE_HEADER = re.compile(r'^\| category +\| mAP +\| mAP_50 +\| mAP_75 +\| mAP_s +\| mAP_m +\| mAP_l +\|$', re.M)


def classwise_rows(log: str, name: str) -> list[str]:
    return re.findall(rf'^\| {re.escape(name)} +\| (?:nan|\d+\.\d+) +\|', log, re.M)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, coco_root, run_tool):
    work_dir = tmp_path_factory.mktemp('det_train')
    proc = run_tool('tools/train.py', CONFIG, '--work-dir', work_dir, *det_options(
        coco_root, **{'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
                      'default_hooks.checkpoint.interval': 1, 'default_hooks.logger.interval': 1}))
    return work_dir, proc


def test_train_writes_a_checkpoint_and_evaluates(trained):
    work_dir, proc = trained
    assert (work_dir / 'epoch_1.pth').is_file()
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr


def test_test_out_then_coco_eval(trained, coco_root, tmp_path, run_tool):
    work_dir, _ = trained
    out = tmp_path / 'results'
    proc = run_tool('tools/test.py', CONFIG, work_dir / 'epoch_1.pth', '--work-dir', tmp_path / 'wd',
                    '--out', out, '--show-dir', tmp_path / 'vis', *det_options(coco_root))
    log = proc.stdout + proc.stderr
    assert 'bbox_mAP_copypaste' in log and 'segm_mAP_copypaste' in log
    assert len(CLASSWISE_HEADER.findall(log)) == 2  # mmdet's per-category tables (classwise=True): bbox, segm
    for name in DEMO_DET_CLASSES:
        assert len(classwise_rows(log, name)) == 2, name
    bbox, segm = out / 'results.bbox.json', out / 'results.segm.json'
    assert bbox.is_file() and segm.is_file()
    assert list((tmp_path / 'vis').rglob('*.jpg')) or list((tmp_path / 'vis').rglob('*.png'))

    summary = tmp_path / 'ap.json'
    proc = run_tool('tools/coco_eval.py', '--ann', f'{coco_root}/annotations/instances_val2017.json',
                    '--results', bbox, segm, '--json-out', summary)
    assert len(re.findall(r'Average Precision', proc.stdout)) == 12  # 6 AP lines per type
    numbers = json.loads(summary.read_text())
    assert set(numbers) == {'bbox', 'segm'} and 'AP50' in numbers['segm']


DET_INFERENCER = '''
import sys
from mmdet.apis import DetInferencer
assert 'convnextv2_dense' not in sys.modules
inferencer = DetInferencer(weights=sys.argv[1], device='cpu')  # no config: it comes from the checkpoint
result = inferencer(sys.argv[2])
print('predictions', len(result['predictions'][0]['labels']))
'''


def test_det_inferencer_reads_the_checkpoint_alone(trained, coco_root, tmp_path):
    # mmengine reads the file with torch's weights-only default before the config in it imports us
    work_dir, _ = trained
    image = next((coco_root / 'val2017').iterdir())
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-c', DET_INFERENCER, str(work_dir / 'epoch_1.pth'), str(image)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'predictions \d+', proc.stdout)
