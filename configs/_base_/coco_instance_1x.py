# COCO instance segmentation, the standard 1x multi-scale recipe for quick baselines: shorter side
# 480..800, 12 epochs with steps at 8 and 11, batch 16 (8 GPUs x 2), layer-wise lr decay 0.95, fp16 AMP
# (mmcv's roi_align has no bf16 kernel); the optimizer is adamw_layer_decay.py's.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/default_runtime.py',
    './adamw_layer_decay.py',
]

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[(1333, s) for s in range(480, 801, 32)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(classwise=True)
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise'))
# SafeCheckpointHook (convnextv2_dense.mm): atomic files that torch.load's weights-only default reads.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3))
# GcFreezeHook (convnextv2_dense.mm): the objects alive when training (or a test) starts leave the garbage
# collector's full passes, which would otherwise stall the host (and so the GPU) for hundreds of ms each.
custom_hooks = [dict(type='GcFreezeHook')]
