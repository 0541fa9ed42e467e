"""Evaluation helpers that need no torch: COCO bbox / segm evaluation of results files (pycocotools)."""
from .coco import (STAT_NAMES, CategoryAP, CocoReport, check_output_path, classwise_ap, evaluate_files,
                   evaluate_results, format_classwise, format_report, select_results, stats_dict,
                   write_stats_json)
from .coco_inputs import IOU_TYPES, CocoEvalError, ResultsFile, load_annotations, load_results

__all__ = ['IOU_TYPES', 'STAT_NAMES', 'CategoryAP', 'CocoEvalError', 'CocoReport', 'ResultsFile',
           'check_output_path', 'classwise_ap', 'evaluate_files', 'evaluate_results', 'format_classwise',
           'format_report', 'load_annotations', 'load_results', 'select_results', 'stats_dict',
           'write_stats_json']
