"""Running a loaded segmentor or detector on batches of frames, through mmseg's and mmdet's own APIs.

Segmentation goes through ``mmseg.apis.inference_model`` (which batches a list). Detection goes through
mmdet's test pipeline and ``test_step`` exactly as ``mmdet.apis.inference_detector`` does, but on the
whole batch at once (``inference_detector`` loops image by image). Results come back as plain numpy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .sources import Frame


@dataclass(frozen=True)
class Instances:
    """One image's detections, at the image's own size.

    Args:
        boxes (np.ndarray): ``(N, 4)`` float ``x1, y1, x2, y2``.
        labels (np.ndarray): ``(N,)`` int class indices.
        scores (np.ndarray): ``(N,)`` float.
        masks (np.ndarray, optional): ``(N, H, W)`` bool, None for a box-only detector.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None

    def above(self, score_thr: float) -> 'Instances':
        keep = self.scores >= score_thr
        return Instances(self.boxes[keep], self.labels[keep], self.scores[keep],
                         None if self.masks is None else self.masks[keep])


def predict_seg(model: nn.Module, frames: Sequence[Frame]) -> list[np.ndarray]:
    """Label maps (``(H, W)`` int64 class indices at each frame's size) from ``mmseg.apis.inference_model``."""
    from mmseg.apis import inference_model
    samples = inference_model(model, [frame.bgr for frame in frames])
    return [s.pred_sem_seg.data[0].cpu().numpy().astype(np.int64) for s in samples]


def _det_pipeline(model: nn.Module):
    cache = model.__dict__.get('_infer_pipeline')
    if cache is None:
        from mmdet.utils import get_test_pipeline_cfg
        from mmengine.dataset import Compose
        steps = [dict(step) for step in get_test_pipeline_cfg(model.cfg)]
        steps = [s for s in steps if s.get('type', '').split('.')[-1] != 'LoadAnnotations']  # no labels here
        steps[0]['type'] = 'mmdet.LoadImageFromNDArray'
        cache = Compose(steps)
        model.__dict__['_infer_pipeline'] = cache
    return cache


def predict_det(model: nn.Module, frames: Sequence[Frame]) -> list[Instances]:
    """Detections for a batch of frames: mmdet's test pipeline, then ``model.test_step`` on the batch."""
    from mmengine.dataset import pseudo_collate
    pipeline = _det_pipeline(model)
    data = pseudo_collate([pipeline(dict(img=frame.bgr, img_id=i, img_path=frame.path))
                           for i, frame in enumerate(frames)])
    with torch.no_grad():
        samples = model.test_step(data)
    out = []
    for sample in samples:
        pred = sample.pred_instances
        masks = pred.masks.cpu().numpy().astype(bool) if 'masks' in pred else None
        out.append(Instances(pred.bboxes.cpu().numpy(), pred.labels.cpu().numpy().astype(np.int64),
                             pred.scores.cpu().numpy(), masks))
    return out
