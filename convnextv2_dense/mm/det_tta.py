"""Flip test-time augmentation for detectors with a mask head (Mask R-CNN), on top of mmdet's DetTTAModel.

mmdet 3.3's ``DetTTAModel`` merges boxes only and stops on instance masks. This subclass merges the
views the same way (boxes brought back from each flip, then class-wise NMS over all views) and keeps,
for every surviving box, the mask its own view predicted, flipped back the same way. ``tools/test.py
--tta`` uses it for a detection config with a mask head and no ``tta_model`` of its own.
"""
from __future__ import annotations

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

_FLIP_DIMS = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}


def unflip_masks(masks: torch.Tensor, meta: dict) -> torch.Tensor:
    """Undo a view's flip on its ``(N, H, W)`` masks (already at the original image size)."""
    if not meta.get('flip'):
        return masks
    direction = meta.get('flip_direction', 'horizontal')
    if direction not in _FLIP_DIMS:
        raise ValueError(f'unknown flip_direction {direction!r}, expected one of {sorted(_FLIP_DIMS)}')
    return masks.flip(_FLIP_DIMS[direction])


class MaskFlipDetTTAModel(DetTTAModel):
    """``DetTTAModel`` that also carries instance masks through the merge.

    Args:
        tta_cfg (dict): ``dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)``, as for
            ``DetTTAModel``.
        **kwargs: ``module`` (the detector) and the other ``BaseTTAModel`` arguments.
    """

    def _merge_single_sample(self, data_samples: list[DetDataSample]) -> DetDataSample:
        preds = [s.pred_instances for s in data_samples]
        if preds[0].get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        metas = [s.metainfo for s in data_samples]
        bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds], [p.scores for p in preds], metas)
        labels = torch.cat([p.labels for p in preds])
        masks = torch.cat([unflip_masks(p.masks, meta) for p, meta in zip(preds, metas)])
        if bboxes.numel() == 0:
            return data_samples[0]
        kept, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        kept = kept[:self.tta_cfg.max_per_img]
        merged = InstanceData()
        merged.bboxes, merged.scores = kept[:, :-1].clone(), kept[:, -1].clone()
        merged.labels, merged.masks = labels[keep], masks[keep]
        result = data_samples[0]
        result.pred_instances = merged
        return result
