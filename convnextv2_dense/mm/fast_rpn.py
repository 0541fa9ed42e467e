"""mmdet's ``RPNHead`` with the batch's targets, losses and proposals made in one pass (see
``convnextv2_dense.mm.fast_det``, which registers it, for the whole family and docs/benchmarks.md for the
numbers)."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from .fast_targets import assign_like, assigns_in_one_pass, sample_pos_neg_masks, scatter_rows


def rpn_head_class(sampler_type: type) -> type:
    """``RPNHeadFast``, built on first use (importing mmdet's classes only then); ``sampler_type`` is the
    sampler whose draw the one pass repeats (``RandomSamplerFast``)."""
    from mmengine.structures import InstanceData

    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.task_modules.prior_generators import anchor_inside_flags
    from mmdet.structures.bbox import cat_boxes, get_box_tensor

    class RPNHeadFast(RPNHead):
        """mmdet's RPNHead making the batch's targets, losses and proposals in one pass
        (convnextv2_dense.mm.fast_rpn); arguments as RPNHead."""

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
            *targets, avg_factor = self._one_pass_targets(anchor_list, valid_flag_list, batch_gt_instances,
                                                          batch_img_metas)
            num_level_anchors = [anchors.size(0) for anchors in anchor_list[0]]
            return (*(list(t.split(num_level_anchors, dim=1)) for t in targets), avg_factor)

        def _one_pass_targets(self, anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas) -> tuple:
            """The batch's labels, label weights, box targets and box weights, each (images, anchors, ...) with the
            levels' anchors in a row, and mmdet's ``avg_factor``."""
            # mmdet's loop over the images (assign, sample, encode, unmap: ~100 operations per image), as one
            # pass over the batch: the anchors are the images' same grids; each image's IoUs with them, padded
            # with -1 to the batch's most boxes and with -1 where an anchor is outside the image, assign as
            # mmdet's assigner does on the image's anchors inside
            anchors = get_box_tensor(cat_boxes(anchor_list[0]))
            border = self.train_cfg['allowed_border']
            inside = torch.stack([anchor_inside_flags(anchors, torch.cat(flags), meta['img_shape'][:2], border)
                                  for flags, meta in zip(valid_flag_list, batch_img_metas)])
            assigner, sampler = self.assigner, self.sampler
            overlaps = pad_sequence([assigner.iou_calculator(gt.bboxes, anchors) for gt in batch_gt_instances],
                                    batch_first=True, padding_value=-1.)
            gt_inds, _, gt_labels = assign_like(
                assigner, overlaps.masked_fill_(~inside[:, None, :], -1.),
                pad_sequence([gt.labels for gt in batch_gt_instances], batch_first=True))
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
            return labels, label_weights, bbox_targets, bbox_weights, avg_factor

        def loss_by_feat(self, cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                         batch_gt_instances_ignore=None):
            anchor_list, valid_flag_list = self.get_anchors([score.size()[-2:] for score in cls_scores],
                                                            batch_img_metas, device=cls_scores[0].device)
            if not (self._targets_in_one_pass(anchor_list, batch_gt_instances, batch_gt_instances_ignore, True, False)
                    and self._elementwise_losses()):
                return super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                                            batch_gt_instances_ignore)
            # mmdet's AnchorHead.loss_by_feat computes both losses level by level (about 30 operations a level,
            # and a synchronisation in the one-hot labels); both are sums of per-anchor terms over avg_factor, so
            # here they are taken over all levels at once: the same gradients, the same loss up to the order of
            # the sum
            labels, label_weights, bbox_targets, bbox_weights, avg_factor = self._one_pass_targets(
                anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas)
            num_imgs, reg_dim = len(batch_img_metas), self.bbox_coder.encode_size
            scores = torch.cat([s.permute(0, 2, 3, 1).reshape(num_imgs, -1) for s in cls_scores], dim=1)
            deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(num_imgs, -1, reg_dim) for d in bbox_preds], dim=1)
            loss_cls = self.loss_cls(scores.reshape(-1, 1), labels.reshape(-1), label_weights.reshape(-1),
                                     avg_factor=avg_factor)
            loss_bbox = self.loss_bbox(deltas.reshape(-1, reg_dim), bbox_targets.reshape(-1, reg_dim),
                                       bbox_weights.reshape(-1, reg_dim), avg_factor=avg_factor)
            return dict(loss_rpn_cls=loss_cls, loss_rpn_bbox=loss_bbox)

        def _elementwise_losses(self) -> bool:
            """Whether both losses are mmdet's sums of per-anchor terms (so that the levels can be summed together):
            sigmoid cross-entropy of one class, L1 or smooth L1 on the deltas."""
            cls, box = self.loss_cls, self.loss_bbox
            return (type(cls).__name__ == 'CrossEntropyLoss' and cls.use_sigmoid and not cls.use_mask
                    and self.cls_out_channels == 1 and type(box).__name__ in ('L1Loss', 'SmoothL1Loss')
                    and not self.reg_decoded_bbox)

        def _targets_in_one_pass(self, anchor_list, batch_gt_instances, batch_gt_instances_ignore, unmap_outputs,
                                 return_sampling_results) -> bool:
            """Whether :meth:`get_targets` can take the batch in one pass: the images share their anchors, each has
            boxes, no box is ignored, and the assigner and sampler are ones it knows (else mmdet's loop)."""
            return (unmap_outputs and not return_sampling_results and not self.reg_decoded_bbox
                    and all(anchors is anchor_list[0] for anchors in anchor_list)
                    and all(len(gt) > 0 for gt in batch_gt_instances)
                    and assigns_in_one_pass(self.assigner, batch_gt_instances_ignore)
                    and type(self.sampler) is sampler_type and not self.sampler.add_gt_as_proposals)

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
                # (mmdet deep-copies cfg for each image; neither its post-process nor mmcv's NMS changes it)
                results.append(self._bbox_post_process(image, cfg, rescale=rescale, img_meta=meta))
            return results

        def _proposals_in_one_pass(self, score_factors, batch_img_metas, with_nms) -> bool:
            """Whether :meth:`predict_by_feat` can take the batch in one pass (sigmoid scores of one class,
            mmdet's delta coder, no score factors), else mmdet's loop."""
            coder = self.bbox_coder
            return (score_factors is None and with_nms and batch_img_metas is not None and self.use_sigmoid_cls
                    and self.cls_out_channels == 1 and not torch.onnx.is_in_onnx_export()
                    and type(coder).__name__ in ('DeltaXYWHBBoxCoder', 'DeltaXYWHBBoxCoderFast')
                    and not coder.use_box_type)

    RPNHeadFast.__module__ = __name__
    return RPNHeadFast
