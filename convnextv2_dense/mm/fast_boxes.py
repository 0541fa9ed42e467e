"""mmdet's box coder, anchor generator and IoU calculator without host-to-device copies in the training step:
the same numbers, bit for bit.

mmdet makes small constant tensors from Python values inside the step: the coder's means and stds at every
encode and decode (``deltas.new_tensor(means)``), the IoU's ``eps`` at every call, and each anchor level's base
anchors are copied from the CPU at every call. On a GPU each is a copy from pageable memory, and each such
copy makes the host wait for the GPU (a synchronisation): 34 of a Mask R-CNN step's 176 at 4 images
(docs/benchmarks.md). Here the constants are made once per device and kept; the arithmetic is mmdet's,
operation for operation, so the results are equal.

- ``DeltaXYWHBBoxCoderFast``: mmdet's ``DeltaXYWHBBoxCoder`` (single-image ``encode`` / ``decode``; batched and
  ONNX decoding take mmdet's path).
- ``AnchorGeneratorFast``: mmdet's ``AnchorGenerator``, its base anchors moved to the feature maps' device once,
  and its last anchor grids and valid flags kept: they depend only on the feature map sizes, the padded image
  size and the device, and mmdet makes them anew for every image at every step (about 450 small operations
  per Mask R-CNN step at 4 images).
- ``BboxOverlaps2DFast``: mmdet's ``BboxOverlaps2D`` for the IoU / IoF of two box sets (the assigners' use;
  aligned pairs, GIoU and fp16 take mmdet's path).

:data:`STOCK_TYPES` maps each variant to the stock type (the benchmark's 'stock' row uses it).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

STOCK_TYPES: dict[str, str] = {'DeltaXYWHBBoxCoderFast': 'DeltaXYWHBBoxCoder',
                               'AnchorGeneratorFast': 'AnchorGenerator', 'BboxOverlaps2DFast': 'BboxOverlaps2D'}


class DeviceConstants:
    """Tensors of fixed values, made once per (device, dtype) and kept."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self._made: dict[tuple, dict[str, torch.Tensor]] = {}

    def like(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (tensor.device, tensor.dtype)
        if key not in self._made:
            self._made[key] = {name: tensor.new_tensor(value) for name, value in self.values.items()}
        return self._made[key]


class KeptResults:
    """The last ``size`` lists of tensors made by a deterministic function, by key. Each call gets a new list of
    the same tensors (mmdet already hands one image's anchors to every image of a batch: nobody writes to
    them)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._kept: dict[tuple, list] = {}

    def get(self, key: tuple, make: Callable[[], list]) -> list:
        if key in self._kept:
            self._kept[key] = self._kept.pop(key)  # most recently used last
        else:
            self._kept[key] = make()
            while len(self._kept) > self.size:
                del self._kept[next(iter(self._kept))]
        return list(self._kept[key])


def sizes_key(featmap_sizes: Any) -> tuple:
    """Feature map sizes (tuples or ``torch.Size``) as a hashable key."""
    return tuple(tuple(int(v) for v in size) for size in featmap_sizes)


def encode_deltas(proposals: torch.Tensor, gt: torch.Tensor, means: torch.Tensor,
                  stds: torch.Tensor) -> torch.Tensor:
    """mmdet's ``bbox2delta`` with ``means`` and ``stds`` given as (1, 4) tensors on the boxes' device (x and y
    computed together: the same operations on the same values, with a third of the launches)."""
    proposals, gt = proposals.float(), gt.float()
    p_ctr = (proposals[..., :2] + proposals[..., 2:]) * 0.5
    p_wh = proposals[..., 2:] - proposals[..., :2]
    g_ctr = (gt[..., :2] + gt[..., 2:]) * 0.5
    g_wh = gt[..., 2:] - gt[..., :2]
    deltas = torch.cat([(g_ctr - p_ctr) / p_wh, torch.log(g_wh / p_wh)], dim=-1)
    return deltas.sub_(means).div_(stds)


def decode_deltas(rois: torch.Tensor, deltas: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                  max_shape: Any = None, wh_ratio_clip: float = 16 / 1000, clip_border: bool = True,
                  add_ctr_clamp: bool = False, ctr_clamp: int = 32) -> torch.Tensor:
    """mmdet's ``delta2bbox`` (rois (N, 4), deltas (N, 4 * classes)) with ``means`` and ``stds`` given as (1, 4)
    tensors on the boxes' device."""
    num_bboxes, num_classes = deltas.size(0), deltas.size(1) // 4
    if num_bboxes == 0:
        return deltas
    denorm = deltas.reshape(-1, 4) * stds + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    rois_ = rois.repeat(1, num_classes).reshape(-1, 4)
    pxy = (rois_[:, :2] + rois_[:, 2:]) * 0.5
    pwh = rois_[:, 2:] - rois_[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(wh_ratio_clip))
    if add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=ctr_clamp, min=-ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    bboxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if clip_border and max_shape is not None:
        bboxes[..., 0::2].clamp_(min=0, max=max_shape[1])
        bboxes[..., 1::2].clamp_(min=0, max=max_shape[0])
    return bboxes.reshape(num_bboxes, -1)


def box_overlaps(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str = 'iou', eps: float = 1e-6) -> torch.Tensor:
    """mmdet's ``bbox_overlaps`` of every box of ``bboxes1`` (..., m, 4) with every box of ``bboxes2``
    (..., n, 4), ``mode`` 'iou' or 'iof', for float32/float64 or CUDA boxes: (..., m, n)."""
    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    lt = torch.max(bboxes1[..., :, None, :2], bboxes2[..., None, :, :2])
    rb = torch.min(bboxes1[..., :, None, 2:], bboxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    if mode == 'iou':
        area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
        union = area1[..., None] + area2[..., None, :] - overlap
    else:
        union = area1[..., None]
    # mmdet: torch.max(union, union.new_tensor([eps])), a copy from the host; the clamp is the same maximum
    return overlap / union.clamp(min=eps)


@functools.cache
def box_classes() -> dict[str, type]:
    """The variants, built on first use (importing mmdet's classes only then)."""
    from mmdet.models.task_modules.assigners import BboxOverlaps2D
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    from mmdet.structures.bbox import HorizontalBoxes, get_box_tensor

    class DeltaXYWHBBoxCoderFast(DeltaXYWHBBoxCoder):
        """mmdet's DeltaXYWHBBoxCoder with its means and stds kept on the device
        (convnextv2_dense.mm.fast_boxes); arguments as DeltaXYWHBBoxCoder."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._constants = DeviceConstants(means=[self.means], stds=[self.stds])

        def encode(self, bboxes, gt_bboxes):
            bboxes, gt_bboxes = get_box_tensor(bboxes), get_box_tensor(gt_bboxes)
            if bboxes.size(0) != gt_bboxes.size(0) or bboxes.size(-1) != 4 or gt_bboxes.size(-1) != 4:
                return super().encode(bboxes, gt_bboxes)  # mmdet's checks and messages
            constants = self._constants.like(gt_bboxes.float())
            return encode_deltas(bboxes, gt_bboxes, constants['means'], constants['stds'])

        def decode(self, bboxes, pred_bboxes, max_shape=None, wh_ratio_clip=16 / 1000):
            bboxes = get_box_tensor(bboxes)
            if pred_bboxes.ndim != 2 or torch.onnx.is_in_onnx_export() or pred_bboxes.size(0) != bboxes.size(0):
                return super().decode(bboxes, pred_bboxes, max_shape, wh_ratio_clip)
            constants = self._constants.like(pred_bboxes)
            decoded = decode_deltas(bboxes, pred_bboxes, constants['means'], constants['stds'], max_shape,
                                    wh_ratio_clip, self.clip_border, self.add_ctr_clamp, self.ctr_clamp)
            if self.use_box_type:
                if decoded.size(-1) != 4:
                    raise ValueError('decoded boxes of shape (N, num_classes * 4) cannot be wrapped in a box type')
                decoded = HorizontalBoxes(decoded)
            return decoded

    class AnchorGeneratorFast(AnchorGenerator):
        """mmdet's AnchorGenerator with its base anchors moved to the feature maps' device once, and the last
        few anchor grids and valid flags kept (convnextv2_dense.mm.fast_boxes); arguments as AnchorGenerator."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._kept = KeptResults()

        def grid_priors(self, featmap_sizes, dtype=torch.float32, device='cuda'):
            key = ('grid', sizes_key(featmap_sizes), dtype, torch.device(device))
            return self._kept.get(key, lambda: super(AnchorGeneratorFast, self).grid_priors(
                featmap_sizes, dtype, device))

        def valid_flags(self, featmap_sizes, pad_shape, device='cuda'):
            key = ('valid', sizes_key(featmap_sizes), tuple(int(v) for v in pad_shape[:2]), torch.device(device))
            return self._kept.get(key, lambda: super(AnchorGeneratorFast, self).valid_flags(
                featmap_sizes, pad_shape, device))

        def single_level_grid_priors(self, featmap_size, level_idx, dtype=torch.float32, device='cuda'):
            if self.base_anchors[level_idx].device != torch.device(device):
                self.base_anchors = [anchors.to(device) for anchors in self.base_anchors]
            return super().single_level_grid_priors(featmap_size, level_idx, dtype, device)

    class BboxOverlaps2DFast(BboxOverlaps2D):
        """mmdet's BboxOverlaps2D with no copy from the host (convnextv2_dense.mm.fast_boxes); arguments as
        BboxOverlaps2D."""

        def __call__(self, bboxes1, bboxes2, mode='iou', is_aligned=False):
            boxes1, boxes2 = get_box_tensor(bboxes1), get_box_tensor(bboxes2)
            plain = (not is_aligned and mode in ('iou', 'iof') and self.dtype is None
                     and boxes1.numel() > 0 and boxes2.numel() > 0
                     and boxes1.size(-1) in (4, 5) and boxes2.size(-1) in (4, 5)
                     and (boxes1.is_cuda or boxes1.dtype in (torch.float32, torch.float64)))
            if not plain:
                return super().__call__(bboxes1, bboxes2, mode, is_aligned)
            return box_overlaps(boxes1[..., :4], boxes2[..., :4], mode)

    classes = (DeltaXYWHBBoxCoderFast, AnchorGeneratorFast, BboxOverlaps2DFast)
    for cls in classes:
        cls.__module__ = __name__
    return {cls.__name__: cls for cls in classes}


def build_box_variant(name: str):
    """A registry entry for the variant ``name`` (arguments as its stock type's)."""
    def build(**kwargs: Any):
        return box_classes()[name](**kwargs)
    build.__name__ = build.__qualname__ = f'build_{name}'
    build.__doc__ = f"Registry entry for ``type='{name}'`` (arguments as mmdet's {STOCK_TYPES[name]})."
    return build
