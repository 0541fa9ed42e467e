"""tools/test.py --out x.pkl (read as mmdet's analysis tools read it) and detection --tta."""
import json
import re
from pathlib import Path

import mmdet
import pytest

from .helpers import det_options, run_tool, seg_options

SEG = 'configs/demo/upernet_convnextv2_atto_demo.py'
DET = 'configs/demo/mask-rcnn_convnextv2_atto_demo.py'


def test_det_out_pkl_is_what_mmdet_analysis_tools_read(det_checkpoint, coco_root, tmp_path):
    out = tmp_path / 'results.pkl'
    run_tool('tools/test.py', DET, det_checkpoint, '--out', out, '--work-dir', tmp_path / 'wd',
             *det_options(coco_root))
    from mmengine.fileio import load
    results = load(str(out))  # as confusion_matrix.py / analyze_results.py / eval_metric.py do
    images = json.loads((coco_root / 'annotations' / 'instances_val2017.json').read_text())['images']
    assert sorted(r['img_id'] for r in results) == sorted(i['id'] for i in images)
    pred = results[0]['pred_instances']
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(pred) and 'gt_instances' not in results[0]
    assert all(isinstance(m, dict) and 'counts' in m for m in pred['masks'])  # RLE, as DumpDetResults writes
    # mmdet's own analysis tools (shipped in its wheel under .mim/tools) read the file
    tools = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'analysis_tools'
    if not tools.is_dir():
        pytest.skip(f'mmdet ships no analysis tools at {tools}')
    options = det_options(coco_root)
    proc = run_tool(tools / 'eval_metric.py', DET, out, *options)
    assert "'coco/bbox_mAP'" in proc.stdout and "'coco/segm_mAP'" in proc.stdout
    plots = tmp_path / 'cm'
    run_tool(tools / 'confusion_matrix.py', DET, out, plots, *options)
    assert (plots / 'confusion_matrix.png').is_file()


def test_seg_out_pkl_dumps_predictions(seg_checkpoint, ade_root, tmp_path):
    out = tmp_path / 'seg.pkl'
    run_tool('tools/test.py', SEG, seg_checkpoint, '--out', out, '--work-dir', tmp_path / 'wd', *seg_options(ade_root))
    from mmengine.fileio import load
    results = load(str(out))
    assert len(results) == 4 and tuple(results[0]['pred_sem_seg']['data'].shape[-2:]) == (64, 64)


def test_det_tta_runs_mmdet_flip_tta(det_checkpoint, coco_root, tmp_path):
    proc = run_tool('tools/test.py', DET, det_checkpoint, '--tta', '--work-dir', tmp_path,
                    *det_options(coco_root))
    log = proc.stdout + proc.stderr
    assert 'DetTTAModel' in log or 'TestTimeAug' in log
    assert re.search(r'coco/bbox_mAP: -?\d', log)


def test_checkpoint_with_a_scheme_is_left_to_mmengine(tmp_path):
    proc = run_tool('tools/test.py', SEG, 'open-mmlab://no_such_model', '--work-dir', tmp_path, check=False)
    assert proc.returncode != 0 and 'checkpoint not found' not in proc.stderr
