"""``tools/test.py`` options that follow mmdet's own ``tools/test.py``: ``--out x.pkl`` and detection ``--tta``.

- ``--out results.pkl`` (or ``.pickle``) dumps the predictions with mmdet's ``DumpDetResults`` (masks as
  RLE, ground truth dropped), the file mmdet's ``tools/analysis_tools`` read (``confusion_matrix.py``,
  ``analyze_results.py``, ``eval_metric.py``); for segmentation, with mmengine's ``DumpResults``. Any
  other ``--out`` is a folder for our COCO json files (detection) or label PNGs (segmentation).
- ``--tta`` on a detection config without ``tta_model`` / ``tta_pipeline`` runs mmdet's ``DetTTAModel``
  over the config's own test pipeline with and without a horizontal flip, as mmdet's test tool does
  (for a detector with a mask head, :class:`~.det_tta.MaskFlipDetTTAModel`, which also merges masks).
- A checkpoint argument with a scheme (``https://``, ``open-mmlab://``, ``torchvision://``...) is left to
  mmengine's loader; a plain path must exist.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import re
from typing import Any

PICKLE_SUFFIXES: tuple[str, ...] = ('.pkl', '.pickle')
FLIP_META_KEYS: tuple[str, ...] = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                   'flip_direction')


def is_pickle_out(out: str | None) -> bool:
    """Whether ``--out`` names a pickle file rather than a folder."""
    return out is not None and out.lower().endswith(PICKLE_SUFFIXES)


def check_checkpoint_arg(checkpoint: str) -> None:
    """Stop with a clear message when a local checkpoint path does not exist (URLs are mmengine's job)."""
    if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', checkpoint):
        return
    if not osp.isfile(checkpoint):
        raise SystemExit(f'error: checkpoint not found: {checkpoint}')


def dump_results(runner: Any, out_file: str, task: str) -> None:
    """Append the pickle-dumping metric to a built runner's test evaluator (after ``Runner.from_cfg``).

    Args:
        runner (mmengine.runner.Runner): The runner about to test.
        out_file (str): The ``.pkl`` file.
        task (str): ``'det'`` (mmdet's ``DumpDetResults``) or ``'seg'`` (mmengine's ``DumpResults``).
    """
    out_file = osp.abspath(out_file)
    os.makedirs(osp.dirname(out_file), exist_ok=True)
    if task == 'det':
        from mmdet.evaluation import DumpDetResults as Dump
    else:
        from mmengine.evaluator import DumpResults as Dump
    runner.test_evaluator.metrics.append(Dump(out_file_path=out_file))


def default_det_tta(cfg: Any) -> None:
    """Give a detection config mmdet's default flip TTA when it defines none (``tta_model``, ``tta_pipeline``).

    Args:
        cfg (mmengine.Config): The config, edited in place.
    """
    if 'tta_model' not in cfg:
        tta_type = 'DetTTAModel'
        if cfg.model.get('roi_head', {}).get('mask_head') is not None:  # DetTTAModel stops on masks
            from mmdet.registry import MODELS

            from .det_tta import MaskFlipDetTTAModel
            MODELS.register_module('MaskFlipDetTTAModel', module=MaskFlipDetTTAModel, force=True)
            tta_type = 'MaskFlipDetTTAModel'
        cfg.tta_model = dict(type=tta_type, tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:  # dataset wrappers
            dataset = dataset['dataset']
        pipeline = copy.deepcopy(dataset.pipeline)
        last = pipeline[-1]
        if last.get('type', '').split('.')[-1] != 'PackDetInputs':
            raise SystemExit('error: --tta needs a test pipeline that ends with PackDetInputs, got '
                             f'{last.get("type")!r}')
        meta_keys = tuple(dict.fromkeys((*last.get('meta_keys', ()), *FLIP_META_KEYS)))
        pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
            [dict(type='PackDetInputs', meta_keys=meta_keys)]])
        cfg.tta_pipeline = pipeline
