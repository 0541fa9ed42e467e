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
- ``RPNHeadFast`` computes the targets of the whole batch in one pass (``get_targets``): mmdet loops over the
  images (assign, sample, encode and unmap: about 100 operations per image, each a kernel launch on a GPU, and
  two synchronisations). Here each image's IoUs are stacked, padded to the batch's most boxes, and the
  assignment, the draw (:func:`.fast_targets.sample_pos_neg_masks`) and the targets run once for the batch,
  with one synchronisation (mmdet's ``avg_factor``, an int): the same targets as mmdet's where the draw takes
  every anchor, else the same numbers of the same kinds of anchors, drawn uniformly. A batch it cannot take
  (an image without boxes, ignored boxes, another assigner or sampler) takes mmdet's loop, where each image's
  anchors inside its border are found once, as indices (mmdet's uses a boolean mask six times). Its proposals
  (``predict_by_feat``) are likewise made for the batch at once up to each image's NMS: each level's scores
  sorted once for the batch, not once per image, and one decode: the same proposals, bit for bit.
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
from torch.nn.utils.rnn import pad_sequence

from .fast_targets import (mask_targets_single, max_iou_assign, rois_by_level, sample_pos_neg,
                           sample_pos_neg_masks, scatter_rows)
from .patching import swapped_globals

STOCK_TYPES: dict[str, str] = {'MaxIoUAssignerFast': 'MaxIoUAssigner', 'RandomSamplerFast': 'RandomSampler',
                               'FCNMaskHeadFast': 'FCNMaskHead', 'SingleRoIExtractorFast': 'SingleRoIExtractor',
                               'RPNHeadFast': 'RPNHead', 'MaskRCNNFast': 'MaskRCNN'}


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
    from mmengine.structures import InstanceData

    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.detectors import MaskRCNN
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    from mmdet.models.task_modules.assigners import AssignResult, MaxIoUAssigner
    from mmdet.models.task_modules.samplers import RandomSampler, SamplingResult
    from mmdet.models.task_modules.prior_generators import anchor_inside_flags
    from mmdet.structures.bbox import BaseBoxes, cat_boxes, get_box_tensor
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

    class RPNHeadFast(RPNHead):
        """mmdet's RPNHead finding an image's anchors inside its border with one host synchronisation
        (convnextv2_dense.mm.fast_det); arguments as RPNHead."""

        def _get_targets_single(self, flat_anchors, valid_flags, gt_instances, img_meta, gt_instances_ignore=None,
                                unmap_outputs=True):
            # mmdet's AnchorHead._get_targets_single, with the inside anchors as indices, found once, where
            # mmdet uses the boolean mask six times (any(), the selection and four unmaps: a synchronisation each)
            inside = anchor_inside_flags(flat_anchors, valid_flags, img_meta['img_shape'][:2],
                                         self.train_cfg['allowed_border']).nonzero().squeeze(1)
            if inside.numel() == 0:
                raise ValueError('There is no valid anchor inside the image boundary. Please check the image size '
                                 'and anchor sizes, or set ``allowed_border`` to -1 to skip the condition.')
            anchors = flat_anchors[inside]
            pred_instances = InstanceData(priors=anchors)
            assign_result = self.assigner.assign(pred_instances, gt_instances, gt_instances_ignore)
            sampling_result = self.sampler.sample(assign_result, pred_instances, gt_instances)
            num_valid = anchors.shape[0]
            target_dim = gt_instances.bboxes.size(-1) if self.reg_decoded_bbox else self.bbox_coder.encode_size
            bbox_targets = anchors.new_zeros(num_valid, target_dim)
            bbox_weights = anchors.new_zeros(num_valid, target_dim)
            labels = anchors.new_full((num_valid,), self.num_classes, dtype=torch.long)
            label_weights = anchors.new_zeros(num_valid, dtype=torch.float)
            pos_inds, neg_inds = sampling_result.pos_inds, sampling_result.neg_inds
            if len(pos_inds) > 0:
                if not self.reg_decoded_bbox:
                    pos_targets = self.bbox_coder.encode(sampling_result.pos_priors, sampling_result.pos_gt_bboxes)
                else:
                    pos_targets = get_box_tensor(sampling_result.pos_gt_bboxes)
                bbox_targets[pos_inds, :] = pos_targets
                bbox_weights[pos_inds, :] = 1.0
                labels[pos_inds] = sampling_result.pos_gt_labels
                pos_weight = self.train_cfg['pos_weight']
                label_weights[pos_inds] = 1.0 if pos_weight <= 0 else pos_weight
            if len(neg_inds) > 0:
                label_weights[neg_inds] = 1.0
            if unmap_outputs:
                total = flat_anchors.size(0)
                labels = scatter_rows(labels, total, inside, fill=self.num_classes)
                label_weights = scatter_rows(label_weights, total, inside)
                bbox_targets = scatter_rows(bbox_targets, total, inside)
                bbox_weights = scatter_rows(bbox_weights, total, inside)
            return labels, label_weights, bbox_targets, bbox_weights, pos_inds, neg_inds, sampling_result

        def get_targets(self, anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
                        batch_gt_instances_ignore=None, unmap_outputs=True, return_sampling_results=False):
            if not self._targets_in_one_pass(anchor_list, batch_gt_instances, batch_gt_instances_ignore,
                                              unmap_outputs, return_sampling_results):
                return super().get_targets(anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas,
                                           batch_gt_instances_ignore, unmap_outputs, return_sampling_results)
            # mmdet's loop over the images (assign, sample, encode, unmap: ~100 operations per image), as one
            # pass over the batch: the anchors are the images' same grids; each image's IoUs with them, padded
            # with -1 to the batch's most boxes and with -1 where an anchor is outside the image, assign as
            # mmdet's assigner does on the image's anchors inside
            num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
            anchors = get_box_tensor(cat_boxes(anchor_list[0]))
            border = self.train_cfg['allowed_border']
            inside = torch.stack([anchor_inside_flags(anchors, torch.cat(flags), meta['img_shape'][:2], border)
                                  for flags, meta in zip(valid_flag_list, batch_img_metas)])
            assigner, sampler = self.assigner, self.sampler
            overlaps = pad_sequence([assigner.iou_calculator(gt.bboxes, anchors) for gt in batch_gt_instances],
                                    batch_first=True, padding_value=-1.)
            gt_inds, _, gt_labels = max_iou_assign(
                overlaps.masked_fill_(~inside[:, None, :], -1.),
                pad_sequence([gt.labels for gt in batch_gt_instances], batch_first=True), assigner.pos_iou_thr,
                assigner.neg_iou_thr, assigner.min_pos_iou, assigner.match_low_quality, assigner.gt_max_assign_all)
            del overlaps
            pos, neg, avg_factors = sample_pos_neg_masks(gt_inds, torch.rand(gt_inds.shape, device=gt_inds.device),
                                                         sampler.num, sampler.pos_fraction, sampler.neg_pos_ub)
            # every anchor's deltas to its box (elementwise, so the positives' are mmdet's), kept at the positives
            boxes = pad_sequence([get_box_tensor(gt.bboxes) for gt in batch_gt_instances], batch_first=True)
            matched = boxes.gather(1, (gt_inds - 1).clamp(min=0)[..., None].expand(-1, -1, boxes.size(-1)))
            deltas = self.bbox_coder.encode(anchors.expand(len(matched), -1, -1).reshape(-1, anchors.size(-1)),
                                            matched.reshape(-1, matched.size(-1))).view(*pos.shape, -1)
            bbox_targets = torch.where(pos[..., None], deltas, 0.).to(anchors.dtype)
            bbox_weights = pos[..., None].expand_as(bbox_targets).to(anchors.dtype)
            labels = torch.where(pos, gt_labels, self.num_classes)
            pos_weight = self.train_cfg['pos_weight']
            label_weights = torch.where(pos, 1.0 if pos_weight <= 0 else pos_weight, neg.float())
            # one host read: mmdet's avg_factor (an int) and whether every image has an anchor inside
            avg_factor, has_inside = torch.stack([avg_factors.sum(), inside.any(-1).all().long()]).tolist()
            if not has_inside:
                raise ValueError('There is no valid anchor inside the image boundary. Please check the image size '
                                 'and anchor sizes, or set ``allowed_border`` to -1 to skip the condition.')
            by_level = functools.partial(torch.split, split_size_or_sections=num_level_anchors, dim=1)
            return (list(by_level(labels)), list(by_level(label_weights)), list(by_level(bbox_targets)),
                    list(by_level(bbox_weights)), avg_factor)

        def _targets_in_one_pass(self, anchor_list, batch_gt_instances, batch_gt_instances_ignore, unmap_outputs,
                                 return_sampling_results) -> bool:
            """Whether :meth:`get_targets` can take the batch in one pass: the images share their anchors, each has
            boxes, no box is ignored, and the assigner and sampler are ones it knows (else mmdet's loop)."""
            assigner, sampler = self.assigner, self.sampler
            ignored = batch_gt_instances_ignore is not None and any(
                i is not None and len(i) > 0 for i in batch_gt_instances_ignore)
            return (unmap_outputs and not return_sampling_results and not self.reg_decoded_bbox
                    and all(anchors is anchor_list[0] for anchors in anchor_list)
                    and all(len(gt) > 0 for gt in batch_gt_instances)
                    and isinstance(assigner, MaxIoUAssigner) and assigner.perm_repeat_gt_cfg is None
                    and assigner.gpu_assign_thr <= 0 and not (assigner.ignore_iof_thr > 0 and ignored)
                    and type(sampler) is RandomSamplerFast and not sampler.add_gt_as_proposals)

        def predict_by_feat(self, cls_scores, bbox_preds, score_factors=None, batch_img_metas=None, cfg=None,
                            rescale=False, with_nms=True):
            if not self._proposals_in_one_pass(score_factors, batch_img_metas, with_nms):
                return super().predict_by_feat(cls_scores, bbox_preds, score_factors, batch_img_metas, cfg,
                                               rescale, with_nms)
            # mmdet's _predict_by_feat_single before its NMS (per image and level: scores, their top nms_pre,
            # those anchors and deltas; then the decode), for every image at once: the same values, sorted the
            # same way; each image's NMS and filter stay mmdet's (_bbox_post_process)
            cfg = self.test_cfg if cfg is None else cfg
            num_imgs, reg_dim = len(batch_img_metas), self.bbox_coder.encode_size
            mlvl_priors = self.prior_generator.grid_priors([score.shape[-2:] for score in cls_scores],
                                                           dtype=cls_scores[0].dtype, device=cls_scores[0].device)
            nms_pre = cfg.get('nms_pre', -1)
            scores, deltas, priors, level_ids = [], [], [], []
            for level, (cls_score, bbox_pred, level_priors) in enumerate(zip(cls_scores, bbox_preds, mlvl_priors)):
                score = cls_score.detach().permute(0, 2, 3, 1).reshape(num_imgs, -1).sigmoid()
                delta = bbox_pred.detach().permute(0, 2, 3, 1).reshape(num_imgs, -1, reg_dim)
                if 0 < nms_pre < score.size(1):
                    score, order = score.sort(dim=1, descending=True)
                    score, order = score[:, :nms_pre], order[:, :nms_pre]
                    delta = delta.gather(1, order[..., None].expand(-1, -1, reg_dim))
                    level_priors = level_priors[order]
                else:
                    level_priors = level_priors.expand(num_imgs, -1, -1)
                scores.append(score)
                deltas.append(delta)
                priors.append(level_priors)
                level_ids.append(torch.full((score.size(1),), level, dtype=torch.long, device=score.device))
            priors, deltas = torch.cat(priors, dim=1), torch.cat(deltas, dim=1)
            bboxes = self.bbox_coder.decode(priors.reshape(-1, priors.size(-1)), deltas.reshape(-1, reg_dim))
            bboxes = bboxes.view(num_imgs, -1, bboxes.size(-1))
            scores, level_ids = torch.cat(scores, dim=1), torch.cat(level_ids)
            results = []
            for boxes, image_scores, meta in zip(bboxes, scores, batch_img_metas):
                if self.bbox_coder.clip_border:  # the decode's clip to the image, as mmdet's delta2bbox
                    height, width = meta['img_shape'][:2]
                    boxes[:, 0::2].clamp_(min=0, max=width)
                    boxes[:, 1::2].clamp_(min=0, max=height)
                image = InstanceData(bboxes=boxes, scores=image_scores, level_ids=level_ids)
                results.append(self._bbox_post_process(image, copy.deepcopy(cfg), rescale=rescale, img_meta=meta))
            return results

        def _proposals_in_one_pass(self, score_factors, batch_img_metas, with_nms) -> bool:
            """Whether :meth:`predict_by_feat` can take the batch in one pass (sigmoid scores of one class,
            mmdet's delta coder, no score factors), else mmdet's loop."""
            coder = self.bbox_coder
            return (score_factors is None and with_nms and batch_img_metas is not None and self.use_sigmoid_cls
                    and self.cls_out_channels == 1 and not torch.onnx.is_in_onnx_export()
                    and type(coder).__name__ in ('DeltaXYWHBBoxCoder', 'DeltaXYWHBBoxCoderFast')
                    and not coder.use_box_type)

    class MaskRCNNFast(MaskRCNN):
        """mmdet's MaskRCNN whose RPN gets its copy of the batch without copies of the ground-truth masks
        (convnextv2_dense.mm.fast_det); arguments as MaskRCNN."""

        def loss(self, batch_inputs, batch_data_samples):
            # TwoStageDetector.loss's one deepcopy is the RPN's copy of the samples
            with swapped_globals('mmdet.models.detectors.two_stage', copy=_COPY_SHARING_MASKS):
                return super().loss(batch_inputs, batch_data_samples)

    classes = (MaxIoUAssignerFast, RandomSamplerFast, FCNMaskHeadFast, SingleRoIExtractorFast, RPNHeadFast,
               MaskRCNNFast)
    for cls in classes:
        cls.__module__ = __name__
    return {cls.__name__: cls for cls in classes}


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
