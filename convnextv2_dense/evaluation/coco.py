"""COCO bbox / segm evaluation of results files with pycocotools' ``COCOeval``, plus per-category AP.

The 12 numbers are ``COCOeval.stats`` itself: matching, accumulation and the summary are pycocotools',
nothing is re-implemented. What this adds is what users of ``tools/coco_eval.py`` miss: the type of a
results file is read from its content, inputs are checked with clear errors (:mod:`.coco_inputs`), a
per-category AP table computed as mmdet's ``CocoMetric(classwise=True)`` does, and a JSON dump of the
numbers. For segm results the ``bbox`` of each entry is dropped before evaluation, as mmdet's
``CocoMetric`` does, so that small/medium/large are decided by mask area, not box area. Only stdlib,
numpy and pycocotools are imported.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco_inputs import (IOU_TYPES, CocoEvalError, ResultsFile, check_segm_ground_truth, load_annotations,
                          load_results)

#: Names of ``COCOeval.stats[0..11]``, in order.
STAT_NAMES: tuple[str, ...] = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
                               'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


@dataclass(frozen=True)
class CategoryAP:
    """AP of one category at ``area='all'``, ``maxDets=100``; ``nan`` when it has no ground truth.

    Args:
        category_id (int): The category id of the annotations.
        name (str): The category name of the annotations.
        ap (float): AP averaged over IoU 0.50:0.95.
        ap50 (float): AP at IoU 0.50.
        ap75 (float): AP at IoU 0.75.
    """

    category_id: int
    name: str
    ap: float
    ap50: float
    ap75: float


@dataclass(frozen=True)
class CocoReport:
    """The evaluation of one IoU type.

    Args:
        iou_type (str): ``'bbox'`` or ``'segm'``.
        source (str): The results file evaluated.
        num_detections (int): How many detections it holds.
        stats (dict[str, float]): ``COCOeval.stats`` by :data:`STAT_NAMES`, exactly.
        summary (str): The 12 lines ``COCOeval.summarize()`` prints.
        classwise (tuple[CategoryAP]): Per-category AP, in category id order.
    """

    iou_type: str
    source: str
    num_detections: int
    stats: dict[str, float]
    summary: str
    classwise: tuple[CategoryAP, ...]


def select_results(results: Sequence[ResultsFile], iou_type: str | None = None) -> dict[str, ResultsFile]:
    """Pick the results file to evaluate for each IoU type.

    Args:
        results (Sequence[ResultsFile]): The results files given, each with the type of its content.
        iou_type (str, optional): Evaluate only this type. ``'bbox'`` with only segm results given
            evaluates the boxes of the segm results (their ``bbox``, or the box of their mask).
            Defaults to None: every type given.

    Returns:
        dict[str, ResultsFile]: The file to evaluate per type, in the order of :data:`IOU_TYPES`.
    """
    if iou_type is not None and iou_type not in IOU_TYPES:
        raise CocoEvalError(f'iou_type must be one of {list(IOU_TYPES)} or None, got {iou_type!r}')
    by_type: dict[str, list[ResultsFile]] = {}
    for result in results:
        by_type.setdefault(result.iou_type, []).append(result)
    for kind, files in by_type.items():
        if len(files) > 1:
            raise CocoEvalError(f'{kind} results given twice: {[f.path for f in files]}; '
                                f'give one results file per type')
    if iou_type is None:
        return {kind: by_type[kind][0] for kind in IOU_TYPES if kind in by_type}
    if iou_type in by_type:
        return {iou_type: by_type[iou_type][0]}
    if iou_type == 'bbox' and 'segm' in by_type:
        return {'bbox': by_type['segm'][0]}
    raise CocoEvalError(f'{iou_type} evaluation was asked for, but no results file holds {iou_type} results '
                        f'(given: {", ".join(f"{r.path!r} ({r.iou_type})" for r in results) or "none"})')


def _compressed_rle(segm: dict) -> dict:
    """Compressed RLE as pycocotools' ``area``/``iou`` take it; uncompressed (list) counts are encoded."""
    if isinstance(segm['counts'], list):
        return mask_utils.frPyObjects(segm, *segm['size'])
    return segm


def prepare_detections(results: ResultsFile, iou_type: str) -> list[dict[str, Any]]:
    """Copies of the detections in the form ``COCO.loadRes`` takes for ``iou_type``.

    Args:
        results (ResultsFile): Checked detections from :func:`load_results`.
        iou_type (str): The type they are evaluated as.

    Returns:
        list[dict]: New dicts; ``results`` is left as it was.
    """
    prepared = []
    for entry in results.detections:
        det = dict(entry)
        if iou_type == 'segm':
            det.pop('bbox', None)  # as mmdet's CocoMetric: mask area decides small/medium/large
            det['segmentation'] = _compressed_rle(det['segmentation'])
        elif 'segmentation' in det:  # boxes of segm results
            segm = _compressed_rle(det.pop('segmentation'))
            det.setdefault('bbox', [float(v) for v in mask_utils.toBbox(segm)])
        prepared.append(det)
    return prepared


def _mean_precision(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float('nan')


def classwise_ap(coco_eval: COCOeval, coco_gt: COCO) -> tuple[CategoryAP, ...]:
    """Per-category AP from an accumulated ``COCOeval``, as mmdet's ``CocoMetric(classwise=True)``.

    Args:
        coco_eval (COCOeval): Evaluated and accumulated.
        coco_gt (COCO): The ground truth, for category names.

    Returns:
        tuple[CategoryAP]: One entry per category of ``coco_eval.params.catIds``.
    """
    # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets]; -1 = no gt
    precision = coco_eval.eval['precision']
    table = []
    for k, cat_id in enumerate(coco_eval.params.catIds):
        table.append(CategoryAP(category_id=cat_id, name=str(coco_gt.cats[cat_id]['name']),
                                ap=_mean_precision(precision[:, :, k, 0, -1]),
                                ap50=_mean_precision(precision[0, :, k, 0, -1]),
                                ap75=_mean_precision(precision[5, :, k, 0, -1])))
    return tuple(table)


def evaluate_results(coco_gt: COCO, results: ResultsFile, iou_type: str) -> CocoReport:
    """Run ``COCOeval`` on one results file, with pycocotools' progress prints silenced.

    Args:
        coco_gt (COCO): Ground truth from :func:`load_annotations`.
        results (ResultsFile): Detections from :func:`load_results` (checked against ``coco_gt``).
        iou_type (str): ``'bbox'`` or ``'segm'``.

    Returns:
        CocoReport: The 12 numbers, the summary lines and the per-category table.
    """
    detections = prepare_detections(results, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    return CocoReport(iou_type=iou_type, source=results.path, num_detections=len(detections),
                      stats={name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)},
                      summary=summary.getvalue().rstrip('\n'), classwise=classwise_ap(coco_eval, coco_gt))


def evaluate_files(ann_file: str, results_files: Sequence[str],
                   iou_type: str | None = None) -> dict[str, CocoReport]:
    """Check and evaluate results files against a COCO annotation file.

    Args:
        ann_file (str): COCO instances annotations (ground truth).
        results_files (Sequence[str]): COCO results files, at most one per type; the type of each is read
            from its content.
        iou_type (str, optional): Evaluate only this type; see :func:`select_results`. Defaults to None.

    Returns:
        dict[str, CocoReport]: One report per type evaluated, bbox first.
    """
    if isinstance(results_files, str) or not results_files:
        raise CocoEvalError(f'give a list of one or more results files, got {results_files!r}')
    coco_gt = load_annotations(ann_file)
    selected = select_results([load_results(path, coco_gt) for path in results_files], iou_type)
    if 'segm' in selected:
        check_segm_ground_truth(coco_gt, ann_file)
    return {kind: evaluate_results(coco_gt, results, kind) for kind, results in selected.items()}


def _fmt(value: float) -> str:
    return 'nan' if math.isnan(value) else f'{value:.3f}'


def format_classwise(report: CocoReport) -> str:
    """The per-category AP table of one report, as aligned text."""
    rows = [('category', 'AP', 'AP50', 'AP75')]
    rows += [(c.name, _fmt(c.ap), _fmt(c.ap50), _fmt(c.ap75)) for c in report.classwise]
    width = max(len(row[0]) for row in rows)
    lines = [f'{row[0]:<{width}}  ' + '  '.join(f'{v:>6}' for v in row[1:]) for row in rows]
    lines.insert(1, '-' * len(lines[0]))
    return '\n'.join(lines)


def format_report(report: CocoReport, classwise: bool = True) -> str:
    """The summary of one report: a title, pycocotools' 12 lines and, optionally, the per-category table.

    Args:
        report (CocoReport): From :func:`evaluate_results`.
        classwise (bool): Append the per-category AP table. Defaults to True.

    Returns:
        str: Printable text, without a trailing newline.
    """
    parts = [f'Evaluating {report.iou_type}: {report.source} ({report.num_detections} detections)',
             report.summary]
    if classwise:
        parts += ['', f'Per-category {report.iou_type} AP:', format_classwise(report)]
    return '\n'.join(parts)


def stats_dict(reports: Mapping[str, CocoReport]) -> dict[str, dict[str, float]]:
    """``{'bbox': {'AP': .., ..., 'ARl': ..}, 'segm': {...}}`` for the types evaluated."""
    return {kind: dict(report.stats) for kind, report in reports.items()}


def check_output_path(path: str) -> None:
    """Fail before a long evaluation if ``path`` cannot be written to."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CocoEvalError(f'JSON output {path!r} is a directory')
    if not os.path.isdir(directory):
        raise CocoEvalError(f'JSON output {path!r}: directory {directory!r} does not exist')


def write_stats_json(path: str, reports: Mapping[str, CocoReport]) -> None:
    """Write :func:`stats_dict` to ``path`` atomically (a temporary file in the same folder, then rename).

    Args:
        path (str): The JSON file to (over)write.
        reports (Mapping[str, CocoReport]): The reports by type.
    """
    check_output_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp_path = tempfile.mkstemp(prefix='.coco_eval.', suffix='.tmp', dir=directory)
    except OSError as err:
        raise CocoEvalError(f'JSON output {path!r} cannot be written: {err.strerror or err}') from None
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(stats_dict(reports), f, indent=2)
            f.write('\n')
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except OSError as err:
        raise CocoEvalError(f'JSON output {path!r} cannot be written: {err.strerror or err}') from None
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
