#!/usr/bin/env python
"""Evaluate COCO-format bbox / segm results files with pycocotools and print per-category AP.

Example::

    python tools/coco_eval.py --ann data/coco/annotations/instances_val2017.json \\
        --results work_dirs/x/results.bbox.json work_dirs/x/results.segm.json --json-out metrics.json

The logic lives in :mod:`convnextv2_dense.evaluation.coco`; this file only parses arguments and prints.
Exit status: 0 on success, 1 for a problem with an input file (the message names it), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.evaluation import (IOU_TYPES, CocoEvalError, check_output_path,  # noqa: E402
                                         evaluate_files, format_report, write_stats_json)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``sys.argv[1:]`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        description='COCO bbox / segm evaluation of results files with pycocotools: the 12 standard '
                    'numbers per type and a per-category AP table.')
    parser.add_argument('--ann', required=True, help='COCO instances annotation file (ground truth)')
    parser.add_argument('--results', required=True, nargs='+', metavar='RESULTS',
                        help='COCO results files, one per type; entries with "segmentation" make a segm '
                             'file, entries with only "bbox" a bbox file (as mmdet\'s results.bbox.json '
                             'and results.segm.json)')
    parser.add_argument('--iou-type', choices=IOU_TYPES, default=None,
                        help='evaluate only this type; bbox with only segm results given evaluates their '
                             'boxes (default: every type given)')
    parser.add_argument('--classwise', action=argparse.BooleanOptionalAction, default=True,
                        help='print the per-category AP, AP50, AP75 table (default: on)')
    parser.add_argument('--json-out', metavar='FILE', default=None,
                        help='write {"bbox": {"AP": .., ..., "ARl": ..}, "segm": {...}} to FILE (atomically)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; return the exit status."""
    args = parse_args(argv)
    try:
        if args.json_out is not None:
            check_output_path(args.json_out)
        reports = evaluate_files(args.ann, args.results, iou_type=args.iou_type)
        for path in args.results:
            if path not in {report.source for report in reports.values()}:
                print(f'note: {path} not evaluated (--iou-type {args.iou_type})', file=sys.stderr)
        print('\n\n'.join(format_report(report, classwise=args.classwise) for report in reports.values()))
        if args.json_out is not None:
            write_stats_json(args.json_out, reports)
            print(f'\nWrote {args.json_out}')
    except CocoEvalError as err:
        print(f'coco_eval: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
