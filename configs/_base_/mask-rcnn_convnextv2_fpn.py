# Mask R-CNN with a ConvNeXt V2 backbone: mmdet's own Mask R-CNN, backbone swapped, FPN fed from all
# four stages, soft-NMS at test (the paper's single-scale test). A leaf sets arch, channels, drop path
# and checkpoint; a recipe file (coco_instance_*.py) sets data, schedule and optimizer.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['convnextv2_dense'], allow_failed_imports=False)

model = dict(
    # mmdet's MaskRCNN whose RPN gets its copy of the batch without copies of the ground-truth masks
    # (convnextv2_dense.mm.fast_det): the same model, checkpoints and losses.
    type='MaskRCNNFast',
    backbone=dict(
        _delete_=True,
        type='ConvNeXtV2',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        # Off: no clean measurement shows a gain for the whole iteration (README "Speed": the earlier 283 vs
        # 281 ms/iter had the backbone compiled in both columns), the iteration is largely host-bound (GPU
        # busy ~200 of 339 ms with HF's backbone), and the 1x recipe's multi-scale shapes recompile.
        # compile=True compiles training steps only (DYNAMO_CACHE_SIZE_LIMIT is honoured).
        compile=False),
    neck=dict(in_channels=[128, 256, 512, 1024]),
    # mmdet's components with less host work per step (convnextv2_dense.mm.fast_det, .fast_rpn, .fast_roi and
    # .fast_boxes): the same anchors, box deltas, IoUs, RPN targets and proposals, RoI features and mask targets
    # bit for bit, the same assignments without host synchronisations (the batch's in one pass), the same
    # sampling distribution from the GPU's random stream.
    rpn_head=dict(type='RPNHeadFast', anchor_generator=dict(type='AnchorGeneratorFast'),
                  bbox_coder=dict(type='DeltaXYWHBBoxCoderFast')),
    roi_head=dict(type='StandardRoIHeadFast', bbox_roi_extractor=dict(type='SingleRoIExtractorFast'),
                  bbox_head=dict(bbox_coder=dict(type='DeltaXYWHBBoxCoderFast')),
                  mask_roi_extractor=dict(type='SingleRoIExtractorFast'), mask_head=dict(type='FCNMaskHeadFast')),
    train_cfg=dict(
        rpn=dict(assigner=dict(type='MaxIoUAssignerFast', iou_calculator=dict(type='BboxOverlaps2DFast')),
                 sampler=dict(type='RandomSamplerFast')),
        rcnn=dict(assigner=dict(type='MaxIoUAssignerFast', iou_calculator=dict(type='BboxOverlaps2DFast')),
                  sampler=dict(type='RandomSamplerFast'))),
    test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms', iou_threshold=0.5))))
