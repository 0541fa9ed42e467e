"""mmdet's ``MaxIoUAssigner``, ``RandomSampler`` and ``FCNMaskHead`` with less host work per training step:
the same assignments, the same sampling distribution and the same mask targets.

- ``MaxIoUAssignerFast`` assigns without waiting for the GPU. mmdet's RPN assigner loops over the
  ground-truth boxes for its low-quality matches, reading each box's best IoU on the host (one
  synchronisation and a few launches per box: 160 of a Mask R-CNN step's 352 synchronisations at 4 images
  of 20 boxes, docs/benchmarks.md), and picks its positives with boolean indexing (more). Here the same
  rules run as whole-tensor operations: for each prior the last box that claims it wins, as in mmdet's loop.

- ``RandomSamplerFast`` draws its random subset with a permutation made on the gallery's device. mmdet's
  draws the permutation on the CPU and copies it over (a CPU ``randperm`` of the RPN's ~250k anchors per
  image: 10-13 ms of host time per Mask R-CNN step at 4 x 1024x1024, docs/benchmarks.md). The subset is
  uniform as before; the values differ because the random stream is the device's.
- ``FCNMaskHeadFast`` computes the mask targets without host round trips. mmdet's copies each image's
  positive boxes and their assignments to the host (two synchronisations), copies the image's whole bitmap
  mask array to the GPU from pageable memory (blocking the host), RoIAligns it, copies the binarised result
  back to the host (a third synchronisation) and from there to the GPU again. Here the boxes are clipped on
  the device, the masks go over once from pinned memory without blocking the host, each mask is made float
  once (mmdet makes a float copy of a whole mask per positive box), and the targets stay on the device: the
  same RoIAlign of the same values, so the same targets, bit for bit. Polygon masks take mmdet's path.

:data:`STOCK_TYPES` maps each variant to the stock type (the benchmark's 'stock' row uses it).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn.modules.utils import _pair

STOCK_TYPES: dict[str, str] = {'MaxIoUAssignerFast': 'MaxIoUAssigner', 'RandomSamplerFast': 'RandomSampler',
                               'FCNMaskHeadFast': 'FCNMaskHead'}


def max_iou_assign(overlaps: torch.Tensor, gt_labels: torch.Tensor, pos_iou_thr: float, neg_iou_thr: Any,
                   min_pos_iou: float, match_low_quality: bool,
                   gt_max_assign_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet's ``MaxIoUAssigner.assign_wrt_overlaps`` for at least one box and one prior, with no host
    synchronisation: ``(gt_inds, max_overlaps, labels)`` (1-based box index, 0 background, -1 ignored).

    Args:
        overlaps (Tensor): IoUs of the k ground-truth boxes with the n priors, (k, n).
        gt_labels (Tensor): The boxes' labels, (k,).
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality, gt_max_assign_all: as MaxIoUAssigner's.
    """
    num_gts, num_priors = overlaps.shape
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)
    gt_inds = overlaps.new_full((num_priors,), -1, dtype=torch.long)
    if isinstance(neg_iou_thr, float):
        gt_inds.masked_fill_((max_overlaps >= 0) & (max_overlaps < neg_iou_thr), 0)
    elif isinstance(neg_iou_thr, tuple):
        if len(neg_iou_thr) != 2:
            raise ValueError(f'neg_iou_thr as a tuple is (low, high), got {neg_iou_thr}')
        gt_inds.masked_fill_((max_overlaps >= neg_iou_thr[0]) & (max_overlaps < neg_iou_thr[1]), 0)
    gt_inds = torch.where(max_overlaps >= pos_iou_thr, argmax_overlaps + 1, gt_inds)
    if match_low_quality:
        # each box with a good enough best IoU claims its best priors (all that tie, or its argmax); mmdet
        # loops over the boxes in order, so where several claim one prior the last box wins
        eligible = (gt_max_overlaps >= min_pos_iou)[:, None]
        if gt_max_assign_all:
            claims = (overlaps == gt_max_overlaps[:, None]) & eligible
        else:
            claims = torch.zeros_like(overlaps, dtype=torch.bool).scatter_(1, gt_argmax_overlaps[:, None], eligible)
        from_last = claims.flip(0).to(torch.uint8).argmax(dim=0)  # argmax takes the first of equal values
        gt_inds = torch.where(claims.any(dim=0), num_gts - from_last, gt_inds)
    # (a -1 made with new_tensor would be a host-to-device copy, a synchronisation)
    labels = gt_labels[(gt_inds - 1).clamp(min=0)].long().masked_fill(gt_inds <= 0, -1)
    return gt_inds, max_overlaps, labels


def device_random_choice(gallery: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` elements of ``gallery`` drawn uniformly without replacement, on the gallery's device."""
    if num > gallery.numel():
        raise ValueError(f'cannot draw {num} samples from a gallery of {gallery.numel()}')
    return gallery[torch.randperm(gallery.numel(), device=gallery.device)[:num]]


def mask_targets_single(boxes: torch.Tensor, gt_inds: torch.Tensor, gt_masks: Any, mask_size: Any,
                        binarize: bool = True) -> torch.Tensor:
    """The mask targets of one image's positive boxes, computed where the boxes are (no host round trip).

    Args:
        boxes (Tensor): Positive boxes, (N, 4) as x1, y1, x2, y2 in the image's pixels.
        gt_inds (Tensor): Index of the ground-truth mask each box is assigned to, (N,).
        gt_masks (BitmapMasks): The image's ground-truth masks (numpy, on the host, as the pipeline makes them).
        mask_size (int | tuple[int, int]): Output (h, w).
        binarize (bool): Round the resampled masks to 0 / 1 (mmdet's default; ``soft_mask_target`` off).

    Returns:
        Tensor: (N, h, w) float32 targets, equal to mmdet's ``mask_target_single``.
    """
    from mmcv.ops import roi_align
    size = _pair(mask_size)
    if boxes.shape[0] == 0 or len(gt_masks.masks) == 0:
        return boxes.new_zeros((0, *size), dtype=torch.float32)
    device = boxes.device
    masks = torch.from_numpy(gt_masks.masks)
    masks = masks.pin_memory().to(device, non_blocking=True) if device.type == 'cuda' else masks.to(device)
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, gt_masks.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, gt_masks.height)
    # mmdet's BitmapMasks.crop_and_resize copies each box's mask out (one full-image float mask per positive
    # box: 128 x 4 MiB at 1024x1024) and RoIAligns box i on copy i. The box's ground-truth index as the RoI's
    # batch index reads the same values from one float copy of the image's masks: the same RoIAlign, so the
    # same targets, with one copy per mask instead of one per box.
    rois = torch.cat([gt_inds.to(device=device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    targets = roi_align(masks.to(boxes.dtype)[:, None], rois, size, 1.0, 0, 'avg', True).squeeze(1)
    return (targets >= 0.5).float() if binarize else targets.float()


@functools.cache
def det_classes() -> dict[str, type]:
    """The variants, built on first use (importing mmdet's classes only then)."""
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.task_modules.assigners import AssignResult, MaxIoUAssigner
    from mmdet.models.task_modules.samplers import RandomSampler
    from mmdet.structures.mask import BitmapMasks

    class MaxIoUAssignerFast(MaxIoUAssigner):
        """mmdet's MaxIoUAssigner with no host synchronisation (convnextv2_dense.mm.fast_det); arguments as
        MaxIoUAssigner."""

        def assign_wrt_overlaps(self, overlaps, gt_labels):
            if overlaps.numel() == 0:  # no box or no prior: mmdet's path, which has no synchronisation
                return super().assign_wrt_overlaps(overlaps, gt_labels)
            gt_inds, max_overlaps, labels = max_iou_assign(
                overlaps, gt_labels, self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou,
                self.match_low_quality, self.gt_max_assign_all)
            return AssignResult(num_gts=overlaps.size(0), gt_inds=gt_inds, max_overlaps=max_overlaps,
                                labels=labels)

    class RandomSamplerFast(RandomSampler):
        """mmdet's RandomSampler drawing on the gallery's device (convnextv2_dense.mm.fast_det); arguments as
        RandomSampler."""

        def random_choice(self, gallery, num):
            if not isinstance(gallery, torch.Tensor):  # lists and arrays: mmdet's own path
                return super().random_choice(gallery, num)
            return device_random_choice(gallery, num)

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

    classes = (MaxIoUAssignerFast, RandomSamplerFast, FCNMaskHeadFast)
    for cls in classes:
        cls.__module__ = __name__
    return {cls.__name__: cls for cls in classes}


def build_max_iou_assigner_fast(**kwargs: Any):
    """Registry entry for ``type='MaxIoUAssignerFast'`` (arguments as mmdet's MaxIoUAssigner)."""
    return det_classes()['MaxIoUAssignerFast'](**kwargs)


def build_random_sampler_fast(**kwargs: Any):
    """Registry entry for ``type='RandomSamplerFast'`` (arguments as mmdet's RandomSampler)."""
    return det_classes()['RandomSamplerFast'](**kwargs)


def build_fcn_mask_head_fast(**kwargs: Any):
    """Registry entry for ``type='FCNMaskHeadFast'`` (arguments as mmdet's FCNMaskHead)."""
    return det_classes()['FCNMaskHeadFast'](**kwargs)
