"""tools/coco_eval.py and convnextv2_dense.evaluation.coco: exact parity with pycocotools' COCOeval and
one test per input check. Every file is written by the tests into ``tmp_path``."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from convnextv2_dense.evaluation import STAT_NAMES, CocoEvalError, evaluate_files, write_stats_json

TOOL = 'tools/coco_eval.py'
H, W = 120, 160  # every image
CATEGORIES = [{'id': 1, 'name': 'person'}, {'id': 2, 'name': 'car'}, {'id': 5, 'name': 'dog'}]


def _rect_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def _triangle_mask(x: int, y: int, size: int) -> np.ndarray:
    """Lower-left half of a square: its mask area is about half its box area (size 40: small mask, medium box)."""
    m = np.zeros((H, W), dtype=np.uint8)
    for r in range(size):
        m[y + r, x:x + r + 1] = 1
    return m


def _uncompressed_rle(m: np.ndarray) -> dict:
    """COCO crowd style RLE: run lengths of the column-major mask, starting with a run of zeros."""
    flat = m.flatten(order='F')
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {'counts': counts, 'size': [H, W]}


def _mmdet_rle(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    rle['counts'] = rle['counts'].decode('utf-8')  # what mmdet writes to results.segm.json
    return rle


def _gt_box(ann_id: int, image_id: int, cat: int, box: tuple) -> dict:
    x, y, w, h = box
    return {'id': ann_id, 'image_id': image_id, 'category_id': cat, 'bbox': [x, y, w, h], 'area': w * h,
            'iscrowd': 0, 'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _ground_truth() -> dict:
    crowd = _rect_mask(100, 80, 50, 30)
    anns = [_gt_box(1, 1, 1, (10, 10, 30, 60)), _gt_box(2, 1, 2, (60, 40, 70, 50)),
            _gt_box(3, 1, 1, (130, 5, 12, 12)), _gt_box(4, 2, 1, (5, 5, 110, 100)),
            _gt_box(5, 2, 5, (120, 10, 25, 25)), _gt_box(6, 4, 2, (20, 20, 40, 40)),
            _gt_box(7, 4, 5, (90, 60, 30, 30)),
            {'id': 8, 'image_id': 2, 'category_id': 1, 'bbox': [100, 80, 50, 30], 'area': 1500, 'iscrowd': 1,
             'segmentation': _uncompressed_rle(crowd)}]
    images = [{'id': i, 'file_name': f'{i}.jpg', 'height': H, 'width': W} for i in (1, 2, 3, 4)]  # 3: empty
    return {'images': images, 'annotations': anns, 'categories': CATEGORIES}


# (image_id, category_id, score, mask); category 5 (dog) gets no detections.
def _detections() -> list[tuple[int, int, float, np.ndarray]]:
    return [(1, 1, 0.95, _rect_mask(11, 12, 30, 58)), (1, 2, 0.90, _rect_mask(62, 45, 70, 50)),
            (1, 1, 0.40, _rect_mask(80, 80, 20, 20)), (1, 1, 0.35, _rect_mask(100, 60, 25, 25)),
            (1, 1, 0.50, _rect_mask(130, 6, 12, 11)),
            (2, 1, 0.85, _rect_mask(8, 10, 100, 95)), (2, 1, 0.70, _rect_mask(102, 82, 45, 25)),
            (2, 2, 0.30, _rect_mask(120, 10, 25, 25)), (3, 1, 0.60, _rect_mask(50, 50, 30, 30)),
            (4, 2, 0.80, _rect_mask(25, 28, 40, 40)), (4, 1, 0.20, _rect_mask(90, 60, 30, 30)),
            (4, 2, 0.85, _triangle_mask(20, 20, 40)),  # the box of the car, half its mask
            (1, 1, 0.99, _triangle_mask(100, 60, 40))]  # a false positive: small by mask, medium by box


def _box(m: np.ndarray) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))]


def _write(path: Path, data: object) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    dets = _detections()
    bbox = [{'image_id': i, 'category_id': c, 'score': s, 'bbox': _box(m)} for i, c, s, m in dets]
    segm = [{'image_id': i, 'category_id': c, 'score': s, 'segmentation': _mmdet_rle(m)} for i, c, s, m in dets]
    return {'ann': _write(tmp_path / 'ann.json', _ground_truth()),
            'bbox': _write(tmp_path / 'results.bbox.json', bbox),
            'segm': _write(tmp_path / 'results.segm.json', segm),
            'segm_with_boxes': _write(tmp_path / 'mmdet.segm.json', [dict(d, bbox=b['bbox'])
                                                                     for d, b in zip(segm, bbox)])}


def _reference(ann: str, detections: str | list, iou_type: str) -> tuple[np.ndarray, str]:
    """COCOeval run directly: its stats and its summary lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann)
        ev = COCOeval(gt, gt.loadRes(detections), iou_type)
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    return ev.stats, out.getvalue().rstrip('\n')


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_api_equals_cocoeval(files: dict[str, str], iou_type: str) -> None:
    stats, summary = _reference(files['ann'], files[iou_type], iou_type)
    reports = evaluate_files(files['ann'], [files[iou_type]])
    assert list(reports) == [iou_type]
    report = reports[iou_type]
    assert [report.stats[name] for name in STAT_NAMES] == stats.tolist()
    assert report.summary == summary
    assert 0 < report.stats['AP'] < 1  # the data exercise matches and misses, not a trivial 0 or 1


def test_per_category_table(files: dict[str, str]) -> None:
    report = evaluate_files(files['ann'], [files['bbox']])['bbox']
    assert [c.name for c in report.classwise] == ['person', 'car', 'dog']
    dog = report.classwise[2]
    assert (dog.ap, dog.ap50, dog.ap75) == (0.0, 0.0, 0.0)  # ground truth but no detections
    assert all(0 < c.ap < 1 for c in report.classwise[:2])


def test_per_category_without_ground_truth_is_nan(files: dict[str, str], tmp_path: Path) -> None:
    gt = _ground_truth()
    gt['categories'] = gt['categories'] + [{'id': 9, 'name': 'zebra'}]
    report = evaluate_files(_write(tmp_path / 'gt9.json', gt), [files['bbox']])['bbox']
    assert report.classwise[-1].name == 'zebra' and math.isnan(report.classwise[-1].ap)


def test_segm_drops_boxes_like_mmdet(files: dict[str, str]) -> None:
    """mmdet's segm files also carry "bbox"; it is dropped so that mask area sets small/medium/large."""
    with open(files['segm_with_boxes']) as f:
        without_boxes = [{k: v for k, v in d.items() if k != 'bbox'} for d in json.load(f)]
    stats, _ = _reference(files['ann'], without_boxes, 'segm')
    report = evaluate_files(files['ann'], [files['segm_with_boxes']])['segm']
    assert [report.stats[name] for name in STAT_NAMES] == stats.tolist()
    by_box_area, _ = _reference(files['ann'], files['segm_with_boxes'], 'segm')
    assert by_box_area[:3].tolist() == stats[:3].tolist() and by_box_area.tolist() != stats.tolist()


def test_iou_type_bbox_evaluates_boxes_of_segm_results(files: dict[str, str]) -> None:
    with open(files['segm_with_boxes']) as f:
        boxes = [{k: v for k, v in d.items() if k != 'segmentation'} for d in json.load(f)]
    stats, _ = _reference(files['ann'], boxes, 'bbox')
    for source in ('segm_with_boxes', 'segm'):  # own "bbox", or the box of the mask
        reports = evaluate_files(files['ann'], [files[source]], iou_type='bbox')
        assert list(reports) == ['bbox']
        assert [reports['bbox'].stats[name] for name in STAT_NAMES] == stats.tolist()


def test_iou_type_restricts(files: dict[str, str]) -> None:
    assert list(evaluate_files(files['ann'], [files['bbox'], files['segm']], iou_type='segm')) == ['segm']


def test_cli_prints_and_writes_json(files: dict[str, str], tmp_path: Path, run_tool) -> None:
    out = tmp_path / 'metrics.json'
    proc = run_tool(TOOL, '--ann', files['ann'], '--results', files['segm'], files['bbox'], '--json-out', out,
                    check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert list(written) == ['bbox', 'segm']
    for iou_type in ('bbox', 'segm'):
        stats, summary = _reference(files['ann'], files[iou_type], iou_type)
        assert list(written[iou_type]) == list(STAT_NAMES)
        assert [written[iou_type][name] for name in STAT_NAMES] == stats.tolist()
        assert summary in proc.stdout and len(summary.splitlines()) == 12
        assert f'Per-category {iou_type} AP' in proc.stdout
    for category in CATEGORIES:
        assert category['name'] in proc.stdout
    assert 'index created' not in proc.stdout and 'DONE' not in proc.stdout  # pycocotools kept quiet


def test_cli_no_classwise(files: dict[str, str], run_tool) -> None:
    proc = run_tool(TOOL, '--ann', files['ann'], '--results', files['bbox'], '--no-classwise', check=False,
                    timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'Average Precision' in proc.stdout and 'Per-category' not in proc.stdout


def test_json_out_is_replaced_atomically(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / 'metrics.json'
    out.write_text('old')
    write_stats_json(str(out), evaluate_files(files['ann'], [files['bbox']]))
    assert set(json.loads(out.read_text())) == {'bbox'}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.coco_eval')) == []


def _bad_case(name: str, tmp_path: Path, files: dict[str, str]) -> tuple[list[str], str]:
    """Arguments for one bad input and a substring its error message must hold."""
    ann, bbox, segm = files['ann'], files['bbox'], files['segm']
    det = {'image_id': 1, 'category_id': 1, 'score': 0.5, 'bbox': [1, 2, 3, 4]}
    rle = _mmdet_rle(_rect_mask(1, 1, 5, 5))
    gt_no_masks = dict(_ground_truth(), annotations=[{k: v for k, v in a.items() if k != 'segmentation'}
                                                     for a in _ground_truth()['annotations']])

    def results(data: object) -> list[str]:
        return ['--ann', ann, '--results', _write(tmp_path / 'r.json', data)]

    def annotations(data: object, results_file: str = bbox) -> list[str]:
        return ['--ann', _write(tmp_path / 'a.json', data), '--results', results_file]

    cases = {
        'ann_missing': lambda: (['--ann', str(tmp_path / 'nope.json'), '--results', bbox], 'does not exist'),
        'ann_malformed': lambda: (annotations('{"images": ['), 'is not valid JSON'),
        'ann_not_coco': lambda: (annotations({'images': []}), 'lacks "annotations"'),
        'results_missing': lambda: (['--ann', ann, '--results', str(tmp_path / 'nope.json')], 'does not exist'),
        'results_malformed': lambda: (results('[{"bbox": '), 'is not valid JSON'),
        'results_not_list': lambda: (results({'bbox': [1, 2, 3, 4]}), 'must be a JSON list'),
        'results_empty': lambda: (results([]), '0 detections'),
        'unknown_image_ids': lambda: (results([dict(det, image_id=i) for i in (1, 77, 78)]),
                                      'image ids absent from the annotations: 77, 78'),
        'unknown_category_ids': lambda: (results([det, dict(det, category_id=3)]),
                                         'category ids absent from the annotations: 3'),
        'unknown_type': lambda: (results([{'image_id': 1, 'category_id': 1, 'score': 0.5, 'keypoints': [1, 2, 2]}]),
                                 'unknown type'),
        'mixed_types': lambda: (results([dict(det, segmentation=rle), det]), 'mixes types'),
        'type_twice': lambda: (['--ann', ann, '--results', bbox, _write(tmp_path / 'r.json', [det])],
                               'bbox results given twice'),
        'segm_asked_without_segm': lambda: (['--ann', ann, '--results', bbox, '--iou-type', 'segm'],
                                            'no results file holds segm results'),
        'missing_score': lambda: (results([{k: v for k, v in det.items() if k != 'score'}]),
                                  "entry 0 (bbox results): lacks ['score']"),
        'bad_box': lambda: (results([dict(det, bbox=[1, 2])]), '"bbox" must be [x, y, width, height]'),
        'polygon_segm': lambda: (results([dict(det, segmentation=[[1, 1, 5, 1, 5, 5]])]),
                                 '"segmentation" must be RLE'),
        'rle_size_mismatch': lambda: (results([dict(det, segmentation=dict(rle, size=[10, 10]))]),
                                      'does not match image 1'),
        'segm_gt_without_masks': lambda: (annotations(gt_no_masks, segm), 'segm evaluation needs "segmentation"'),
        'json_out_dir_missing': lambda: (['--ann', ann, '--results', bbox, '--json-out',
                                          str(tmp_path / 'x' / 'm.json')], 'does not exist'),
    }
    return cases[name]()


BAD_CASES = ['ann_missing', 'ann_malformed', 'ann_not_coco', 'results_missing', 'results_malformed',
             'results_not_list', 'results_empty', 'unknown_image_ids', 'unknown_category_ids', 'unknown_type',
             'mixed_types', 'type_twice', 'segm_asked_without_segm', 'missing_score', 'bad_box', 'polygon_segm',
             'rle_size_mismatch', 'segm_gt_without_masks', 'json_out_dir_missing']


@pytest.mark.parametrize('name', BAD_CASES)
def test_bad_input(name: str, tmp_path: Path, files: dict[str, str], capsys: pytest.CaptureFixture,
                   load_tool) -> None:
    """The tool's ``main`` in this process (a new interpreter per case would import torch 19 times)."""
    args, message = _bad_case(name, tmp_path, files)
    assert load_tool('coco_eval').main(args) == 1
    err = capsys.readouterr().err
    assert message in err
    assert any(repr(a) in err for a in args if a.endswith('.json'))  # the message names the file


@pytest.mark.parametrize('name', ['ann_malformed', 'unknown_image_ids'])
def test_cli_bad_input_exits_nonzero(name: str, tmp_path: Path, files: dict[str, str], run_tool) -> None:
    args, message = _bad_case(name, tmp_path, files)
    proc = run_tool(TOOL, *args, check=False, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_unknown_image_ids_are_listed(files: dict[str, str], tmp_path: Path) -> None:
    det = {'image_id': 1, 'category_id': 1, 'score': 0.5, 'bbox': [1, 2, 3, 4]}
    path = _write(tmp_path / 'r.json', [dict(det, image_id=i) for i in (1, 77, 78, 79, 80, 81, 82)])
    with pytest.raises(CocoEvalError, match=r'77, 78, 79, 80, 81, \.\.\. \(6 in all\)'):
        evaluate_files(files['ann'], [path])
