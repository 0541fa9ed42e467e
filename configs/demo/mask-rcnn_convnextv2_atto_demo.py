# `make demo`: Mask R-CNN + ConvNeXt V2-Atto trained from scratch on the synthetic COCO-layout set that
# `tools/make_demo_data.py` writes (three shape classes with polygon masks). Real CocoDataset, real
# pipeline and CocoMetric, on the CPU in minutes; nothing is downloaded.
_base_ = ['../_base_/mask-rcnn_convnextv2_fpn.py', '../_base_/coco_instance_1x.py']

data_root = 'data/demo/coco/'
classes = ('circle', 'square', 'triangle')
# CPU budget (`make demo` < 10 minutes on 2 cores): the images' own 128 px (shapes of 26-62 px, which the
# stock anchors of 32-512 px cover), a 64-channel FPN (mmcv's CPU RoIAlign, single-threaded, costs in
# proportion), and RoI heads sized for a handful of objects: 64 sampled RoIs per image, a 256-wide box head,
# a two-conv mask head. At 256 px, 128 channels and the stock heads an iteration took 2.0 s, most of it in
# the mask head's convolutions; now about 0.33 s.
image_scale = (128, 128)
width = 64  # FPN and head channels: a quarter of the COCO configs'
model = dict(
    backbone=dict(arch='atto', drop_path_rate=0.0, compile=False),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=64, num_classes=len(classes))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=150), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=150), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
# one loader worker: a batch loads in ~20 ms, and a second worker would take a core from the model
train_dataloader = dict(batch_size=4, num_workers=1, persistent_workers=True,
                        dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=1, persistent_workers=True,
                      dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
# the recipe's optimizer and layer decay (adamw_layer_decay.py, coco_instance_1x.py), in fp32, at this batch's lr
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4, max_keep_ckpts=2, save_best='coco/segm_mAP'))
randomness = dict(seed=0)
