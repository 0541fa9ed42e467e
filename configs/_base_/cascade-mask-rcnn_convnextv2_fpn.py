# Cascade Mask R-CNN with a ConvNeXt V2 backbone: mmdet's own detector, only the backbone swapped, to
# show the backbone drops into any mmdet detector unchanged.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['convnextv2_dense'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXtV2',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        # Off, as in the Mask R-CNN configs (no measured gain, host-bound RoI heads, multi-scale shapes
        # recompile). compile=True compiles training steps only.
        compile=False),
    neck=dict(in_channels=[96, 192, 384, 768]))
