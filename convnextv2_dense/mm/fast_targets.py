"""The tensor work of ``convnextv2_dense.mm.fast_det``'s mmdet variants, as plain functions of tensors: the
assignment, the draws of positives and negatives (per image, and for a batch at once), the mask targets and the
RoIs of each pyramid level, each with few or no host synchronisations. Each says which mmdet computation it
equals. :func:`assign_like` and :func:`assigns_in_one_pass` tie the assignment to an mmdet assigner."""
from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules.utils import _pair


def max_iou_assign(overlaps: torch.Tensor, gt_labels: torch.Tensor, pos_iou_thr: float, neg_iou_thr: Any,
                   min_pos_iou: float, match_low_quality: bool,
                   gt_max_assign_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdet's ``MaxIoUAssigner.assign_wrt_overlaps`` for at least one box and one prior, with no host
    synchronisation: ``(gt_inds, max_overlaps, labels)`` (1-based box index, 0 background, -1 ignored).

    Args:
        overlaps (Tensor): IoUs of the k ground-truth boxes with the n priors, (k, n); or a batch of images,
            (b, k, n), each assigned on its own (an IoU below 0 leaves a prior unassigned and a box unmatched:
            the padding of images with fewer boxes, priors left out).
        gt_labels (Tensor): The boxes' labels, (k,), or (b, k) for a batch.
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality, gt_max_assign_all: as MaxIoUAssigner's.
    """
    num_gts = overlaps.size(-2)
    max_overlaps, argmax_overlaps = overlaps.max(dim=-2)
    gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=-1)
    gt_inds = torch.full_like(max_overlaps, -1, dtype=torch.long)
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
        eligible = (gt_max_overlaps >= min_pos_iou)[..., None]
        if gt_max_assign_all:
            claims = (overlaps == gt_max_overlaps[..., None]) & eligible
        else:
            claims = torch.zeros_like(overlaps, dtype=torch.bool).scatter_(-1, gt_argmax_overlaps[..., None],
                                                                           eligible)
        from_last = claims.flip(-2).to(torch.uint8).argmax(dim=-2)  # argmax takes the first of equal values
        gt_inds = torch.where(claims.any(dim=-2), num_gts - from_last, gt_inds)
    # (a -1 made with new_tensor would be a host-to-device copy, a synchronisation)
    labels = gt_labels.gather(-1, (gt_inds - 1).clamp(min=0)).long().masked_fill(gt_inds <= 0, -1)
    return gt_inds, max_overlaps, labels


def assign_like(assigner: Any, overlaps: torch.Tensor,
                gt_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`max_iou_assign` with the settings of ``assigner`` (an mmdet ``MaxIoUAssigner``)."""
    return max_iou_assign(overlaps, gt_labels, assigner.pos_iou_thr, assigner.neg_iou_thr, assigner.min_pos_iou,
                          assigner.match_low_quality, assigner.gt_max_assign_all)


def assigns_in_one_pass(assigner: Any, batch_gt_instances_ignore: Any) -> bool:
    """Whether ``assigner``'s assignment of each image of a batch is :func:`assign_like` of the image's IoUs:
    mmdet's ``MaxIoUAssigner`` (or a subclass) that neither permutes repeated boxes nor moves to the CPU, and
    has no ignored box it would use."""
    from mmdet.models.task_modules.assigners import MaxIoUAssigner
    ignored = any(i is not None and len(i) > 0 for i in batch_gt_instances_ignore or ())
    return (isinstance(assigner, MaxIoUAssigner) and assigner.perm_repeat_gt_cfg is None
            and assigner.gpu_assign_thr <= 0 and not (assigner.ignore_iof_thr > 0 and ignored))


def sample_pos_neg(gt_inds: torch.Tensor, num: int, pos_fraction: float,
                   neg_pos_ub: float = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet ``RandomSampler``'s draw of positives and negatives from one image's assignment, with one host
    synchronisation (the two counts): ``(pos_inds, neg_inds)``, each increasing, as mmdet's (after its
    ``unique()``) are.

    Args:
        gt_inds (Tensor): The assignment, (n,): > 0 positive, 0 negative, -1 ignored.
        num, pos_fraction, neg_pos_ub: as RandomSampler's.
    """
    positive, negative = gt_inds > 0, gt_inds == 0
    num_pos, num_neg = torch.stack([positive.sum(), negative.sum()]).tolist()
    take_pos = min(num_pos, int(num * pos_fraction))
    take_neg = num - take_pos
    if neg_pos_ub >= 0:
        take_neg = min(take_neg, int(neg_pos_ub * max(1, take_pos)))
    take_neg = min(take_neg, num_neg)
    # the k largest of independent uniform keys are a uniform k-subset; the two sets are disjoint, so one
    # draw of keys serves both
    keys = torch.rand(gt_inds.shape, device=gt_inds.device)
    return _largest_keys(keys, positive, take_pos), _largest_keys(keys, negative, take_neg)


def _largest_keys(keys: torch.Tensor, member: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` members with the largest keys (keys in [0, 1); k <= the members), increasing."""
    return torch.where(member, keys, -1.0).topk(k, sorted=False).indices.sort().values


def sample_pos_neg_masks(gt_inds: torch.Tensor, keys: torch.Tensor, num: int, pos_fraction: float,
                         neg_pos_ub: float = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sample_pos_neg` for a batch of images at once, with no host synchronisation: each image's draw,
    by mmdet ``RandomSampler``'s rules, as the members with the largest of ``keys``.

    Args:
        gt_inds (Tensor): The images' assignments, (b, n): > 0 positive, 0 negative, -1 ignored.
        keys (Tensor): Uniform random keys in [0, 1), (b, n).
        num, pos_fraction, neg_pos_ub: as RandomSampler's.

    Returns:
        tuple[Tensor, Tensor, Tensor]: The drawn positives and negatives as (b, n) masks, and each image's
        ``avg_factor`` as mmdet's ``SamplingResult`` has it (``max(pos, 1) + max(neg, 1)``), (b,).
    """
    positive, negative = gt_inds > 0, gt_inds == 0
    take_pos, take_neg = draw_counts(positive, negative, num, pos_fraction, neg_pos_ub)
    pos = _largest_keys_mask(keys, positive, take_pos, int(num * pos_fraction))
    neg = _largest_keys_mask(keys, negative, take_neg, num)
    return pos, neg, take_pos.clamp(min=1) + take_neg.clamp(min=1)


def draw_counts(positive: torch.Tensor, negative: torch.Tensor, num: int, pos_fraction: float,
                neg_pos_ub: float = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """How many positives and negatives mmdet ``RandomSampler`` draws from each image (row) of ``positive`` and
    ``negative`` (masks, (b, n)), on the device: ``(take_pos, take_neg)``, (b,) each."""
    take_pos = positive.sum(-1).clamp(max=int(num * pos_fraction))
    take_neg = num - take_pos
    if neg_pos_ub >= 0:  # mmdet: int(neg_pos_ub * max(1, num_pos)), truncated
        take_neg = torch.minimum(take_neg, (neg_pos_ub * take_pos.clamp(min=1).double()).long())
    return take_pos, torch.minimum(take_neg, negative.sum(-1))


def largest_keys_sorted(keys: torch.Tensor, member: torch.Tensor, take: torch.Tensor, most: int) -> torch.Tensor:
    """Per row, the indices of the ``take[row]`` members with the largest keys, increasing, then padding (the
    last index): (b, min(most, n)). ``take`` <= the members and <= ``most``; keys in [0, 1)."""
    top, chosen = _top_members(keys, member, take, most)
    return torch.where(chosen, top, keys.size(-1) - 1).sort(dim=-1).values


def _largest_keys_mask(keys: torch.Tensor, member: torch.Tensor, take: torch.Tensor, most: int) -> torch.Tensor:
    """Per row, a mask of the ``take[row]`` members with the largest keys (``take`` <= the members and
    <= ``most``)."""
    return torch.zeros_like(member).scatter_(-1, *_top_members(keys, member, take, most))


def _top_members(keys: torch.Tensor, member: torch.Tensor, take: torch.Tensor,
                 most: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``min(most, n)`` indices with the largest keys among the members first (then the rest), and
    which of them are taken (the first ``take[row]``)."""
    most = min(most, keys.size(-1))
    top = torch.where(member, keys, -1.0).topk(most, dim=-1).indices  # largest first
    return top, torch.arange(most, device=keys.device) < take[..., None]


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


def scatter_rows(rows: torch.Tensor, count: int, inds: torch.Tensor, fill: float = 0) -> torch.Tensor:
    """mmdet's ``unmap`` with the subset given as indices: ``count`` rows of ``fill``, ``rows`` put at ``inds``."""
    out = rows.new_full((count, *rows.shape[1:]), fill)
    out[inds] = rows
    return out


def rois_by_level(target_lvls: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, ...]:
    """For each level, the increasing indices of the RoIs assigned to it (``nonzero(target_lvls == level)``
    for every level at the cost of one host synchronisation, the counts)."""
    counts = torch.bincount(target_lvls, minlength=num_levels).tolist()
    return torch.argsort(target_lvls, stable=True).split(counts)
