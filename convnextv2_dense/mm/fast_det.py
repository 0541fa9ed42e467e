"""mmdet's ``MaxIoUAssigner``, ``RandomSampler``, ``RPNHead``, ``SingleRoIExtractor``, ``FCNMaskHead`` and
``MaskRCNN`` with less host work per training step: the same assignments, sampling distribution, targets, RoI
features, mask targets and losses.

- ``MaxIoUAssignerFast`` assigns without waiting for the GPU. mmdet's RPN assigner loops over the
  ground-truth boxes for its low-quality matches, reading each box's best IoU on the host (one
  synchronisation and a few launches per box: 160 of a Mask R-CNN step's 352 synchronisations at 4 images
  of 20 boxes, docs/benchmarks.md), and picks its positives with boolean indexing (more). Here the same
  rules run as whole-tensor operations: for each prior the last box that claims it wins, as in mmdet's loop.

- ``RandomSamplerFast`` draws its subsets on the assignment's device, with one synchronisation per image.
  mmdet's finds the positives and the negatives with ``nonzero`` and ``unique`` (a synchronisation each, four
  per image and sampler) and permutes them on the CPU (a CPU ``randperm`` of the RPN's ~250k anchors per image:
  10-13 ms of host time per Mask R-CNN step at 4 x 1024x1024, docs/benchmarks.md). Here both counts come over
  together, and each subset is the members with the largest of uniform random keys: uniform, as before, and
  in increasing order, as mmdet's; the values differ because the random stream is the device's.
- ``RPNHeadFast`` (:mod:`.fast_rpn`) makes the targets of the whole batch in one pass (``get_targets``):
  mmdet loops over the images (assign, sample, encode and unmap: about 100 operations per image, each a
  kernel launch on a GPU, and two synchronisations). Here each image's IoUs are stacked, padded to the batch's
  most boxes, and the assignment, the draw (:func:`.fast_targets.sample_pos_neg_masks`) and the targets run
  once for the batch, with one synchronisation (mmdet's ``avg_factor``, an int): the same targets as mmdet's
  where the draw takes every anchor, else the same numbers of the same kinds of anchors, drawn uniformly. A
  batch it cannot take (an image without boxes, ignored boxes, another assigner or sampler) takes mmdet's
  loop, where each image's anchors inside its border are found once, as indices (mmdet's uses a boolean mask
  six times). Its proposals (``predict_by_feat``) are likewise made for the batch at once up to each image's
  NMS: each level's scores sorted once for the batch, not once per image, and one decode: the same proposals,
  bit for bit. Its losses (``loss_by_feat``) are taken over all levels at once where both are sums of
  per-anchor terms (sigmoid cross-entropy, L1 or smooth L1): mmdet's per-level losses summed, the same
  gradients bit for bit.
- ``StandardRoIHeadFast`` (:mod:`.fast_roi`) assigns the proposals of the whole batch in one pass (the same
  assignments as mmdet's loop over the images, bit for bit) and draws the batch's RoIs, makes their targets and
  takes the box losses at once (:mod:`.roi_batch`), with one host synchronisation.
- ``SingleRoIExtractorFast`` finds the RoIs of every pyramid level from one count (mmdet's runs ``nonzero``
  per level: four synchronisations per call); the same RoIs in the same order, so the same features.
- ``FCNMaskHeadFast`` computes the mask targets without host round trips. mmdet's copies each image's
  positive boxes and their assignments to the host (two synchronisations), copies the image's whole bitmap
  mask array to the GPU from pageable memory (blocking the host), RoIAligns it, copies the binarised result
  back to the host (a third synchronisation) and from there to the GPU again. Here the boxes are clipped on
  the device, the masks go over once from pinned memory without blocking the host, each mask is made float
  once (mmdet makes a float copy of a whole mask per positive box), and the targets stay on the device: the
  same RoIAlign of the same values, so the same targets, bit for bit. Polygon masks take mmdet's path.
- ``MaskRCNNFast`` gives the RPN its copy of the batch (the labels set to 0) without copying the
  ground-truth masks, which the RPN never reads: mmdet deep-copies every sample, masks included (4 images of
  20 bitmap masks at 1024x1024: 84 MB, 12 ms or more of host time per step). The same model and losses.

:data:`STOCK_TYPES` maps each variant to the stock type (the benchmark's 'stock' row uses it).
"""
from __future__ import annotations

import copy
import functools
import types
from typing import Any

import torch

from .fast_targets import assign_like, mask_targets_single, rois_by_level, sample_pos_neg
from .fast_rpn import rpn_head_class
from .patching import swapped_globals

STOCK_TYPES: dict[str, str] = {'MaxIoUAssignerFast': 'MaxIoUAssigner', 'RandomSamplerFast': 'RandomSampler',
                               'FCNMaskHeadFast': 'FCNMaskHead', 'SingleRoIExtractorFast': 'SingleRoIExtractor',
                               'RPNHeadFast': 'RPNHead', 'MaskRCNNFast': 'MaskRCNN',
                               'StandardRoIHeadFast': 'StandardRoIHead'}


def copy_sharing_masks(samples: list) -> list:
    """``copy.deepcopy(samples)`` (a list of data samples) except that each sample's ground-truth masks are the
    original's, not copies: what the RPN gets (it replaces the copy's labels and reads no masks)."""
    memo: dict[int, Any] = {}
    for sample in samples:
        masks = getattr(sample.get('gt_instances', None), 'masks', None)
        if masks is not None:
            memo[id(masks)] = masks  # deepcopy returns what the memo holds for an object it has seen
    return copy.deepcopy(samples, memo)


_COPY_SHARING_MASKS = types.SimpleNamespace(deepcopy=copy_sharing_masks)


@functools.cache
def det_classes() -> dict[str, type]:
    """The variants, built on first use (importing mmdet's classes only then)."""
    from mmdet.models.detectors import MaskRCNN
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    from mmdet.models.task_modules.assigners import AssignResult, MaxIoUAssigner
    from mmdet.models.task_modules.samplers import RandomSampler, SamplingResult
    from mmdet.structures.bbox import BaseBoxes, cat_boxes
    from mmdet.structures.mask import BitmapMasks

    class MaxIoUAssignerFast(MaxIoUAssigner):
        """mmdet's MaxIoUAssigner with no host synchronisation (convnextv2_dense.mm.fast_det); arguments as
        MaxIoUAssigner."""

        def assign_wrt_overlaps(self, overlaps, gt_labels):
            if overlaps.numel() == 0:  # no box or no prior: mmdet's path, which has no synchronisation
                return super().assign_wrt_overlaps(overlaps, gt_labels)
            gt_inds, max_overlaps, labels = assign_like(self, overlaps, gt_labels)
            return AssignResult(num_gts=overlaps.size(0), gt_inds=gt_inds, max_overlaps=max_overlaps,
                                labels=labels)

    class RandomSamplerFast(RandomSampler):
        """mmdet's RandomSampler drawing on the assignment's device with one host synchronisation per image
        (convnextv2_dense.mm.fast_det); arguments as RandomSampler."""

        def sample(self, assign_result, pred_instances, gt_instances, **kwargs):
            gt_bboxes, priors, gt_labels = gt_instances.bboxes, pred_instances.priors, gt_instances.labels
            if len(priors.shape) < 2:
                priors = priors[None, :]
            gt_flags = priors.new_zeros((priors.shape[0],), dtype=torch.uint8)
            if self.add_gt_as_proposals and len(gt_bboxes) > 0:  # as mmdet's BaseSampler.sample
                if isinstance(gt_bboxes, BaseBoxes) and isinstance(priors, BaseBoxes):
                    gt_bboxes_ = gt_bboxes.convert_to(type(priors))
                else:
                    gt_bboxes_ = gt_bboxes
                priors = cat_boxes([gt_bboxes_, priors], dim=0)
                assign_result.add_gt_(gt_labels)
                gt_flags = torch.cat([priors.new_ones(gt_bboxes_.shape[0], dtype=torch.uint8), gt_flags])
            pos_inds, neg_inds = sample_pos_neg(assign_result.gt_inds, self.num, self.pos_fraction,
                                                self.neg_pos_ub)
            return SamplingResult(pos_inds=pos_inds, neg_inds=neg_inds, priors=priors, gt_bboxes=gt_bboxes,
                                  assign_result=assign_result, gt_flags=gt_flags)

    class FCNMaskHeadFast(FCNMaskHead):
        """mmdet's FCNMaskHead with its mask targets made on the device (convnextv2_dense.mm.fast_det);
        arguments as FCNMaskHead."""

        def get_targets(self, sampling_results, batch_gt_instances, rcnn_train_cfg):
            gt_masks = [gt.masks for gt in batch_gt_instances]
            if not all(isinstance(m, BitmapMasks) for m in gt_masks):  # polygons: mmdet's own path
                return super().get_targets(sampling_results, batch_gt_instances, rcnn_train_cfg)
            binarize = not rcnn_train_cfg.get('soft_mask_target', False)
            targets = [mask_targets_single(res.pos_priors, res.pos_assigned_gt_inds, masks,
                                           rcnn_train_cfg.mask_size, binarize)
                       for res, masks in zip(sampling_results, gt_masks)]
            return torch.cat(targets) if targets else targets

    class SingleRoIExtractorFast(SingleRoIExtractor):
        """mmdet's SingleRoIExtractor finding each level's RoIs with one host synchronisation
        (convnextv2_dense.mm.fast_det); arguments as SingleRoIExtractor."""

        def forward(self, feats, rois, roi_scale_factor=None):
            num_levels = len(feats)
            if num_levels == 1 or torch.onnx.is_in_onnx_export():
                return super().forward(feats, rois, roi_scale_factor)
            rois = rois.type_as(feats[0])
            roi_feats = feats[0].new_zeros(rois.size(0), self.out_channels, *self.roi_layers[0].output_size)
            target_lvls = self.map_roi_levels(rois, num_levels)
            if roi_scale_factor is not None:
                rois = self.roi_rescale(rois, roi_scale_factor)
            for level, inds in enumerate(rois_by_level(target_lvls, num_levels)):
                if inds.numel() > 0:
                    roi_feats[inds] = self.roi_layers[level](feats[level], rois[inds])
                else:  # as mmdet: every level stays in the graph (DDP expects each parameter to get a gradient)
                    roi_feats += sum(x.view(-1)[0] for x in self.parameters()) * 0. + feats[level].sum() * 0.
            return roi_feats

    class MaskRCNNFast(MaskRCNN):
        """mmdet's MaskRCNN whose RPN gets its copy of the batch without copies of the ground-truth masks
        (convnextv2_dense.mm.fast_det); arguments as MaskRCNN."""

        def loss(self, batch_inputs, batch_data_samples):
            # TwoStageDetector.loss's one deepcopy is the RPN's copy of the samples
            with swapped_globals('mmdet.models.detectors.two_stage', copy=_COPY_SHARING_MASKS):
                return super().loss(batch_inputs, batch_data_samples)

    classes = (MaxIoUAssignerFast, RandomSamplerFast, FCNMaskHeadFast, SingleRoIExtractorFast, MaskRCNNFast)
    for cls in classes:
        cls.__module__ = __name__
    return {cls.__name__: cls for cls in (*classes, rpn_head_class(RandomSamplerFast))}


def build_max_iou_assigner_fast(**kwargs: Any):
    """Registry entry for ``type='MaxIoUAssignerFast'`` (arguments as mmdet's MaxIoUAssigner)."""
    return det_classes()['MaxIoUAssignerFast'](**kwargs)


def build_random_sampler_fast(**kwargs: Any):
    """Registry entry for ``type='RandomSamplerFast'`` (arguments as mmdet's RandomSampler)."""
    return det_classes()['RandomSamplerFast'](**kwargs)


def build_single_roi_extractor_fast(**kwargs: Any):
    """Registry entry for ``type='SingleRoIExtractorFast'`` (arguments as mmdet's SingleRoIExtractor)."""
    return det_classes()['SingleRoIExtractorFast'](**kwargs)


def build_rpn_head_fast(**kwargs: Any):
    """Registry entry for ``type='RPNHeadFast'`` (arguments as mmdet's RPNHead)."""
    return det_classes()['RPNHeadFast'](**kwargs)


def build_mask_rcnn_fast(**kwargs: Any):
    """Registry entry for ``type='MaskRCNNFast'`` (arguments as mmdet's MaskRCNN)."""
    return det_classes()['MaskRCNNFast'](**kwargs)


def build_fcn_mask_head_fast(**kwargs: Any):
    """Registry entry for ``type='FCNMaskHeadFast'`` (arguments as mmdet's FCNMaskHead)."""
    return det_classes()['FCNMaskHeadFast'](**kwargs)
