"""mmdet's ``StandardRoIHead`` assigning the proposals of the whole batch in one pass.

mmdet's ``StandardRoIHead.loss`` assigns each image's proposals to its boxes in a loop: one IoU matrix and one
assignment per image (about 40 operations each, each a kernel launch on a GPU, with ``MaxIoUAssignerFast`` and
``BboxOverlaps2DFast``). ``StandardRoIHeadFast`` computes the IoUs of every image at once, the proposals and
boxes padded to the batch's most (the padding's IoUs set to -1, so that it is never assigned nor matched), and
assigns them with the same rules (:func:`.fast_targets.assign_like`): the same assignments as mmdet's, bit
for bit. Sampling, the box head and the mask head then run as in mmdet. A batch it cannot take (an image with
no box or no proposal, ignored boxes the assigner would use, another assigner or IoU) takes mmdet's loop.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from .fast_targets import assign_like, assigns_in_one_pass


def padded_overlaps(iou_calculator: Any, gt_boxes: list[torch.Tensor], priors: list[torch.Tensor]) -> torch.Tensor:
    """The IoUs of each image's boxes (k_i, 4) with its priors (n_i, 4), as (images, max k, max n): mmdet's
    ``BboxOverlaps2D`` (or ours) on the padded batch (elementwise each image's values), -1 where either is
    padding."""
    gts, boxes = pad_sequence(gt_boxes, batch_first=True), pad_sequence(priors, batch_first=True)
    valid_gts = pad_sequence([b.new_ones(len(b), dtype=torch.bool) for b in gt_boxes], batch_first=True)
    valid_priors = pad_sequence([b.new_ones(len(b), dtype=torch.bool) for b in priors], batch_first=True)
    overlaps = iou_calculator(gts, boxes)
    return overlaps.masked_fill_(~(valid_gts[:, :, None] & valid_priors[:, None, :]), -1.)


@functools.cache
def roi_head_class() -> type:
    """``StandardRoIHeadFast``, built on first use (importing mmdet's classes only then)."""
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.utils import unpack_gt_instances
    from mmdet.structures.bbox import get_box_tensor

    class StandardRoIHeadFast(StandardRoIHead):
        """mmdet's StandardRoIHead assigning the batch's proposals in one pass (convnextv2_dense.mm.fast_roi);
        arguments as StandardRoIHead."""

        def loss(self, x, rpn_results_list, batch_data_samples):
            # mmdet's StandardRoIHead.loss, with the assignments made by :meth:`_assign`
            assert len(rpn_results_list) == len(batch_data_samples)
            batch_gt_instances, batch_gt_instances_ignore, _ = unpack_gt_instances(batch_data_samples)
            for rpn_results in rpn_results_list:
                rpn_results.priors = rpn_results.pop('bboxes')
            assign_results = self._assign(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore)
            sampling_results = [
                self.bbox_sampler.sample(assign_result, rpn_results, gt_instances,
                                         feats=[lvl_feat[i][None] for lvl_feat in x])
                for i, (assign_result, rpn_results, gt_instances)
                in enumerate(zip(assign_results, rpn_results_list, batch_gt_instances))]
            losses = dict()
            if self.with_bbox:
                bbox_results = self.bbox_loss(x, sampling_results)
                losses.update(bbox_results['loss_bbox'])
            if self.with_mask:
                mask_results = self.mask_loss(x, sampling_results, bbox_results['bbox_feats'], batch_gt_instances)
                losses.update(mask_results['loss_mask'])
            return losses

        def _assign(self, rpn_results_list, batch_gt_instances, batch_gt_instances_ignore) -> list:
            """Each image's ``AssignResult``, as ``self.bbox_assigner.assign`` gives it."""
            if not self._assign_in_one_pass(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore):
                return [self.bbox_assigner.assign(results, gt, ignore) for results, gt, ignore
                        in zip(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore)]
            assigner = self.bbox_assigner
            priors = [get_box_tensor(results.priors) for results in rpn_results_list]
            gt_boxes = [get_box_tensor(gt.bboxes) for gt in batch_gt_instances]
            overlaps = padded_overlaps(assigner.iou_calculator, gt_boxes, priors)
            labels = pad_sequence([gt.labels for gt in batch_gt_instances], batch_first=True)
            gt_inds, max_overlaps, assigned = assign_like(assigner, overlaps, labels)
            return [AssignResult(num_gts=len(gt), gt_inds=gt_inds[i, :len(p)],
                                 max_overlaps=max_overlaps[i, :len(p)], labels=assigned[i, :len(p)])
                    for i, (gt, p) in enumerate(zip(batch_gt_instances, priors))]

        def _assign_in_one_pass(self, rpn_results_list, batch_gt_instances, batch_gt_instances_ignore) -> bool:
            """Whether :meth:`_assign` can take the batch in one pass: every image has boxes and proposals, the
            assigner is mmdet's MaxIoUAssigner (or ours) with nothing it would ignore, and its IoUs are mmdet's
            2D ones (which take a batch of padded images)."""
            return (assigns_in_one_pass(self.bbox_assigner, batch_gt_instances_ignore)
                    and type(self.bbox_assigner.iou_calculator).__name__ in ('BboxOverlaps2D', 'BboxOverlaps2DFast')
                    and all(len(gt) > 0 for gt in batch_gt_instances)
                    and all(len(results) > 0 for results in rpn_results_list))

    StandardRoIHeadFast.__module__ = __name__
    return StandardRoIHeadFast


def build_standard_roi_head_fast(**kwargs: Any):
    """Registry entry for ``type='StandardRoIHeadFast'`` (arguments as mmdet's StandardRoIHead)."""
    return roi_head_class()(**kwargs)
