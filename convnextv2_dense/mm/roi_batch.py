"""The second stage's sampled RoIs of a whole batch, as padded tensors: what mmdet's ``RandomSampler`` and its
``SamplingResult``s give image by image, made for the batch at once.

mmdet samples each image's proposals on its own: it puts the image's boxes in front of its proposals, draws the
positives and negatives (``nonzero`` and ``unique``: host synchronisations) and indexes out the drawn boxes, their
boxes and labels (about 30 operations per image, each a kernel launch on a GPU); the box head then makes each
image's targets (about 12 more) and ``bbox2roi`` each image's RoIs. :class:`RoIBatch` does each of these once for
the batch, on tensors padded to the batch's most boxes and proposals, with one host synchronisation (the
numbers drawn): the same rules, the same numbers of the same kinds of boxes drawn uniformly (the members with the
largest uniform random keys), each image's drawn positives then negatives in increasing order of mmdet's indices,
so the same RoIs, targets and losses as mmdet's wherever the draw takes every candidate.
"""
from __future__ import annotations

from typing import Any

import torch

from .fast_targets import draw_counts, largest_keys_sorted


class RoIBatch:
    """The drawn RoIs of a batch of images.

    Args:
        gt_boxes (Tensor): Each image's ground-truth boxes, padded, (b, K, 4).
        gt_labels (Tensor): Their labels, padded, (b, K).
        num_gts (Tensor): Each image's number of boxes, (b,), on the boxes' device.
        proposals (Tensor): Each image's proposals, padded, (b, N, 4).
        gt_inds (Tensor): The proposals' assignment (1-based box index, 0 background, -1 ignored or padding),
            (b, N), and ``labels`` their assigned labels (b, N), as mmdet's ``MaxIoUAssigner`` gives them.
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as mmdet's ``RandomSampler``.
    """

    def __init__(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_gts: torch.Tensor,
                 proposals: torch.Tensor, gt_inds: torch.Tensor, labels: torch.Tensor, num: int,
                 pos_fraction: float, neg_pos_ub: float = -1, add_gt_as_proposals: bool = True) -> None:
        num_boxes = gt_boxes.size(1)
        cols = torch.arange(num_boxes, device=gt_inds.device)
        if add_gt_as_proposals:  # as mmdet's sampler: each image's boxes before its proposals, assigned to themselves
            gt_inds = torch.cat([torch.where(cols < num_gts[:, None], cols + 1, -1), gt_inds], dim=1)
            labels = torch.cat([gt_labels, labels], dim=1)
            proposals = torch.cat([gt_boxes, proposals], dim=1)  # mmdet's cat: the wider of the two dtypes
        keys = torch.rand(gt_inds.shape, device=gt_inds.device)
        positive, negative = gt_inds > 0, gt_inds == 0
        take_pos, take_neg = draw_counts(positive, negative, num, pos_fraction, neg_pos_ub)
        pos = largest_keys_sorted(keys, positive, take_pos, int(num * pos_fraction))
        neg = largest_keys_sorted(keys, negative, take_neg, num)
        self.num_pos, self.num_neg = torch.stack([take_pos, take_neg]).tolist()  # the one synchronisation
        self.pos_slots = pos.size(1)
        drawn = torch.cat([pos, neg], dim=1)  # (b, S): the positives' slots, then the negatives'
        # mmdet's index of each drawn candidate in its image's [boxes, proposals]
        self.inds = drawn - (num_boxes - num_gts[:, None]) * (drawn >= num_boxes) if add_gt_as_proposals else drawn
        self.is_gt = ((drawn < num_boxes) if add_gt_as_proposals else torch.zeros_like(drawn, dtype=torch.bool)
                      ).to(torch.uint8)
        self.priors = proposals.gather(1, drawn[..., None].expand(-1, -1, 4))
        self.assigned = gt_inds.gather(1, drawn) - 1  # the positives' 0-based box index
        self.labels = labels.gather(1, drawn)
        self.gt_boxes = gt_boxes.gather(1, self.assigned.clamp(min=0)[..., None].expand(-1, -1, 4))

    @property
    def num_images(self) -> int:
        return len(self.num_pos)

    def flat(self, drawn: torch.Tensor) -> torch.Tensor:
        """The rows of every image's drawn positives then its negatives (from ``drawn``, (b, S, ...), laid out as
        the draw: the positives' slots, then the negatives'), image after image: mmdet's order. One copy."""
        parts = []
        for i, (p, n) in enumerate(zip(self.num_pos, self.num_neg)):
            parts += [drawn[i, :p], drawn[i, self.pos_slots:self.pos_slots + n]]
        return torch.cat(parts)

    def flat_pos(self, pos: torch.Tensor) -> torch.Tensor:
        """The rows of every image's drawn positives (from ``pos``, (b, S or pos slots, ...)), image after image."""
        return torch.cat([pos[i, :p] for i, p in enumerate(self.num_pos)])

    def rois(self) -> torch.Tensor:
        """mmdet's ``bbox2roi`` of each image's drawn boxes (positives then negatives): (sum, 5)."""
        return self.flat(self._with_image_index(self.priors))

    def pos_rois(self) -> torch.Tensor:
        """mmdet's ``bbox2roi`` of each image's drawn positives: (sum of positives, 5)."""
        return self.flat_pos(self._with_image_index(self.priors[:, :self.pos_slots]))

    def _with_image_index(self, boxes: torch.Tensor) -> torch.Tensor:
        images = torch.arange(self.num_images, device=boxes.device, dtype=boxes.dtype)
        return torch.cat([images[:, None, None].expand(-1, boxes.size(1), 1), boxes], dim=-1)

    def box_targets(self, num_classes: int, pos_weight: float,
                    encode: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mmdet ``BBoxHead.get_targets``'s labels and label weights (every drawn RoI) and box targets (the
        positives', ``encode(priors, gt_boxes)`` of (n, 4) each), for ``reg_decoded_bbox`` off.

        Args:
            num_classes (int): The background label.
            pos_weight (float): The positives' label weight (mmdet: 1 where the config's is <= 0).
            encode (callable): The box coder's ``encode``.
        """
        slots = torch.arange(self.labels.size(1), device=self.labels.device) < self.pos_slots
        labels = self.flat(torch.where(slots, self.labels, num_classes))
        weights = self.flat(torch.where(slots, pos_weight, 1.0).to(self.priors.dtype).expand(self.num_images, -1))
        pos = slice(None, self.pos_slots)
        targets = encode(self.priors[:, pos].reshape(-1, 4), self.gt_boxes[:, pos].reshape(-1, 4))
        return labels, weights, self.flat_pos(targets.view(self.num_images, self.pos_slots, -1))

    def pos_index(self) -> torch.Tensor:
        """The positives' rows among :meth:`flat`'s, increasing."""
        rows = torch.arange(sum(self.num_pos) + sum(self.num_neg), device=self.labels.device)
        starts = [0]
        for p, n in zip(self.num_pos, self.num_neg):
            starts.append(starts[-1] + p + n)
        return torch.cat([rows[s:s + p] for s, p in zip(starts, self.num_pos)])

    def sampling_results(self, sampling_result_class: type, gt_boxes: list) -> list:
        """Each image's mmdet ``SamplingResult`` (views of the batch's tensors, not copies).

        Args:
            sampling_result_class (type): mmdet's ``SamplingResult``.
            gt_boxes (list): Each image's ground-truth boxes, as the sampler got them.
        """
        results = []
        pos, neg = slice(None, self.pos_slots), slice(self.pos_slots, None)
        for i, (p, n) in enumerate(zip(self.num_pos, self.num_neg)):
            result = sampling_result_class.__new__(sampling_result_class)
            result.__dict__.update(
                pos_inds=self.inds[i, pos][:p], neg_inds=self.inds[i, neg][:n], num_pos=max(p, 1),
                num_neg=max(n, 1), avg_factor_with_neg=True, avg_factor=max(p, 1) + max(n, 1),
                pos_priors=self.priors[i, pos][:p], neg_priors=self.priors[i, neg][:n],
                pos_is_gt=self.is_gt[i, pos][:p], num_gts=gt_boxes[i].shape[0],
                pos_assigned_gt_inds=self.assigned[i, pos][:p], pos_gt_labels=self.labels[i, pos][:p],
                pos_gt_bboxes=self.gt_boxes[i, pos][:p])
            results.append(result)
        return results
