"""mmdet's ``StandardRoIHead`` assigning and drawing the RoIs of the whole batch in one pass.

mmdet's ``StandardRoIHead.loss`` assigns each image's proposals to its boxes in a loop: one IoU matrix and one
assignment per image (about 40 operations each, each a kernel launch on a GPU, with ``MaxIoUAssignerFast`` and
``BboxOverlaps2DFast``), then draws each image's RoIs and makes its targets (about 40 more, and host reads).
``StandardRoIHeadFast`` computes the IoUs of every image at once, the proposals and boxes padded to the batch's
most (the padding's IoUs set to -1, so that it is never assigned nor matched), and assigns them with the same
rules (:func:`.fast_targets.assign_like`): the same assignments as mmdet's, bit for bit. With our
``RandomSamplerFast`` and mmdet's box head, the draw, the RoIs, the box targets and the losses are then made for
the batch too (:class:`.roi_batch.RoIBatch`), without host reads but one. A batch it cannot take (an image with
no box or no proposal, ignored boxes the assigner would use, another assigner, IoU, sampler or box head) takes
mmdet's loop, or, for another sampler or box head, mmdet's draw and losses after the one-pass assignment.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch.nn.utils.rnn import pad_sequence

from .fast_targets import assign_like, assigns_in_one_pass
from .roi_batch import RoIBatch


class PaddedAssignment(NamedTuple):
    """A batch's boxes and proposals padded to its most, and the proposals' assignment (see :func:`assign_padded`)."""
    gt_boxes: torch.Tensor  # (b, K, 4)
    gt_labels: torch.Tensor  # (b, K)
    num_gts: torch.Tensor  # (b,)
    priors: torch.Tensor  # (b, N, 4)
    gt_inds: torch.Tensor  # (b, N): 1-based box index, 0 background, -1 ignored or padding
    max_overlaps: torch.Tensor  # (b, N)
    labels: torch.Tensor  # (b, N)


def assign_padded(assigner: Any, gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                  priors: list[torch.Tensor]) -> PaddedAssignment:
    """Each image's boxes (k_i, 4) and priors (n_i, 4) padded once, their IoUs by the assigner's calculator
    (mmdet's ``BboxOverlaps2D`` or ours: elementwise each image's values; -1 where either is padding, so that
    padding is never assigned nor matched), assigned by :func:`.fast_targets.assign_like`."""
    gts, boxes = pad_sequence(gt_boxes, batch_first=True), pad_sequence(priors, batch_first=True)
    valid_gts = pad_sequence([b.new_ones(len(b), dtype=torch.bool) for b in gt_boxes], batch_first=True)
    valid_priors = pad_sequence([b.new_ones(len(b), dtype=torch.bool) for b in priors], batch_first=True)
    overlaps = assigner.iou_calculator(gts, boxes)
    overlaps.masked_fill_(~(valid_gts[:, :, None] & valid_priors[:, None, :]), -1.)
    labels = pad_sequence(gt_labels, batch_first=True)
    return PaddedAssignment(gts, labels, valid_gts.sum(1), boxes, *assign_like(assigner, overlaps, labels))


@functools.cache
def roi_head_class() -> type:
    """``StandardRoIHeadFast``, built on first use (importing mmdet's classes only then)."""
    from mmdet.models.losses import accuracy
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.models.task_modules.samplers import SamplingResult
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.utils import unpack_gt_instances
    from mmdet.structures.bbox import get_box_tensor

    class StandardRoIHeadFast(StandardRoIHead):
        """mmdet's StandardRoIHead assigning the batch's proposals in one pass (convnextv2_dense.mm.fast_roi);
        arguments as StandardRoIHead."""

        def loss(self, x, rpn_results_list, batch_data_samples):
            # mmdet's StandardRoIHead.loss, with the assignments made by :meth:`_assign`, or the assignments,
            # the draw, the RoIs and the box targets by :meth:`_sample_batch` (the losses then by
            # :meth:`_batch_losses`)
            assert len(rpn_results_list) == len(batch_data_samples)
            batch_gt_instances, batch_gt_instances_ignore, _ = unpack_gt_instances(batch_data_samples)
            for rpn_results in rpn_results_list:
                rpn_results.priors = rpn_results.pop('bboxes')
            if self._sample_in_one_pass(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore):
                return self._batch_losses(x, self._sample_batch(rpn_results_list, batch_gt_instances),
                                          batch_gt_instances)
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

        def _sample_in_one_pass(self, rpn_results_list, batch_gt_instances, batch_gt_instances_ignore) -> bool:
            """Whether :meth:`_sample_batch` and :meth:`_batch_losses` take the batch: it is assigned in one
            pass, drawn by our RandomSamplerFast, and the heads are mmdet's box head (box deltas as targets)
            and mask head (its own RoI extractor) with their own targets and losses."""
            from mmdet.models.roi_heads.bbox_heads import BBoxHead
            from .fast_det import det_classes
            head = type(self.bbox_head)
            return (self._assign_in_one_pass(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore)
                    and type(self.bbox_sampler) is det_classes()['RandomSamplerFast'] and self.with_bbox
                    and not self.bbox_head.reg_decoded_bbox
                    and all(getattr(head, name) is getattr(BBoxHead, name)
                            for name in ('loss', 'loss_and_target', 'get_targets', '_get_targets_single'))
                    and not (self.with_mask and self.share_roi_extractor))

        def _sample_batch(self, rpn_results_list, batch_gt_instances) -> RoIBatch:
            """The batch's assignment (as :meth:`_assign`) and draw (as ``self.bbox_sampler``), one pass."""
            sampler = self.bbox_sampler
            padded = assign_padded(self.bbox_assigner, [get_box_tensor(gt.bboxes) for gt in batch_gt_instances],
                                   [gt.labels for gt in batch_gt_instances],
                                   [get_box_tensor(results.priors) for results in rpn_results_list])
            return RoIBatch(padded.gt_boxes, padded.gt_labels, padded.num_gts, padded.priors, padded.gt_inds,
                            padded.labels, sampler.num, sampler.pos_fraction, sampler.neg_pos_ub,
                            sampler.add_gt_as_proposals)

        def _batch_losses(self, x, batch: RoIBatch, batch_gt_instances) -> dict:
            """mmdet's losses of the drawn RoIs (``bbox_loss`` and ``mask_loss``, without host
            synchronisations: the counts they read from the device are the batch's, known on the host)."""
            head = self.bbox_head
            rois = batch.rois()
            bbox_results = self._bbox_forward(x, rois)
            cls_score, bbox_pred = bbox_results['cls_score'], bbox_results['bbox_pred']
            pos_weight = 1.0 if self.train_cfg.pos_weight <= 0 else self.train_cfg.pos_weight
            labels, label_weights, pos_targets = batch.box_targets(head.num_classes, pos_weight, head.bbox_coder.encode)
            losses = dict()
            if cls_score is not None and cls_score.numel() > 0:  # mmdet's avg_factor: the drawn RoIs (all weighted)
                loss_cls = head.loss_cls(cls_score, labels, label_weights, avg_factor=max(float(len(rois)), 1.))
                losses.update(loss_cls if isinstance(loss_cls, dict) else dict(loss_cls=loss_cls))
                losses.update(head.loss_cls.get_accuracy(cls_score, labels) if head.custom_activation
                              else dict(acc=accuracy(cls_score, labels)))
            if bbox_pred is not None:
                pos = batch.pos_index()
                if head.reg_class_agnostic:
                    pos_pred = bbox_pred.view(bbox_pred.size(0), -1)[pos]
                else:
                    pos_pred = bbox_pred.view(bbox_pred.size(0), head.num_classes, -1)[pos, labels[pos]]
                # mmdet's weights of the positives are ones; L1 and smooth L1 multiply by them elementwise (no
                # change) after reading on the host whether any is > 0, so they get none
                weights = (None if type(head.loss_bbox).__name__ in ('L1Loss', 'SmoothL1Loss')
                           else torch.ones_like(pos_targets))
                losses['loss_bbox'] = (head.loss_bbox(pos_pred, pos_targets, weights, avg_factor=len(rois))
                                       if len(pos) else pos_pred.sum())
            if self.with_mask:
                mask_results = self._mask_forward(x, batch.pos_rois())
                sampling_results = batch.sampling_results(SamplingResult, [gt.bboxes for gt in batch_gt_instances])
                losses.update(self.mask_head.loss_and_target(
                    mask_preds=mask_results['mask_preds'], sampling_results=sampling_results,
                    batch_gt_instances=batch_gt_instances, rcnn_train_cfg=self.train_cfg)['loss_mask'])
            return losses

        def _assign(self, rpn_results_list, batch_gt_instances, batch_gt_instances_ignore) -> list:
            """Each image's ``AssignResult``, as ``self.bbox_assigner.assign`` gives it."""
            if not self._assign_in_one_pass(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore):
                return [self.bbox_assigner.assign(results, gt, ignore) for results, gt, ignore
                        in zip(rpn_results_list, batch_gt_instances, batch_gt_instances_ignore)]
            priors = [get_box_tensor(results.priors) for results in rpn_results_list]
            padded = assign_padded(self.bbox_assigner, [get_box_tensor(gt.bboxes) for gt in batch_gt_instances],
                                   [gt.labels for gt in batch_gt_instances], priors)
            return [AssignResult(num_gts=len(gt), gt_inds=padded.gt_inds[i, :len(p)],
                                 max_overlaps=padded.max_overlaps[i, :len(p)], labels=padded.labels[i, :len(p)])
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
