# ADE20K semantic segmentation, the paper's recipe (Woo et al., 2023, appendix): mmseg's ADE20K pipeline
# (512x512 crops), 160k iterations, batch 16 (8 GPUs x 2), linear warm-up then poly decay, bf16 AMP,
# validation and checkpoints every 16k iterations; the optimizer is adamw_layer_decay.py's.
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    './adamw_layer_decay.py',
]

train_dataloader = dict(batch_size=2, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

optim_wrapper = dict(dtype='bfloat16')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# GcFreezeHook (convnextv2_dense.mm): the objects alive when training (or a test) starts leave the garbage
# collector's full passes, which would otherwise stall the host (and so the GPU) for hundreds of ms each.
custom_hooks = [dict(type='GcFreezeHook')]

# `tools/test.py --tta`: the paper's multi-scale test. Each image is resized, keeping its aspect ratio, to
# fit 2048x512 times 0.75, 0.875, 1.0, 1.125 and 1.25 (for ADE20K's images: short side 384, 448, 512, 576
# and 640), and each size is also flipped horizontally; mmseg's SegTTAModel averages the softmax scores of
# the 10 sliding-window predictions.
img_ratios = [0.75, 0.875, 1.0, 1.125, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(round(2048 * r), round(512 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
