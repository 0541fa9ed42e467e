# UperNet + ConvNeXt V2 on ADE20K, the paper's recipe (Woo et al., 2023, appendix): 512x512 crops,
# 160k iterations, batch 16 (8 GPUs x 2), AdamW (weight decay 0.05) with layer-wise lr decay, linear
# warm-up then poly, AMP, UPerHead 512 channels + FCN auxiliary head on stage 3 (weight 0.4), slide test.
# A leaf sets `arch`, `channels`, `drop_path_rate` and `checkpoint`; everything else lives here.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['convnextv2_dense'], allow_failed_imports=False)

crop_size = (512, 512)
num_classes = 150
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ConvNeXtV2',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        # torch.compile of the backbone (README, "Speed"); the first iteration compiles for a minute.
        compile=True),
    decode_head=dict(in_channels=[128, 256, 512, 1024], channels=512, num_classes=num_classes),
    auxiliary_head=dict(in_channels=512, in_index=2, channels=256, num_classes=num_classes,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

train_dataloader = dict(batch_size=2, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ConvNeXtV2LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
# The lr above is for 16 images per iteration; fewer GPUs scale it with `--auto-scale-lr` or
# `--cfg-options auto_scale_lr.enable=True`.
auto_scale_lr = dict(enable=False, base_batch_size=16)
# SafeCheckpointHook (convnextv2_dense.mm): atomic files that torch.load's weights-only default reads.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3,
                                     save_best='mIoU'))

# `tools/test.py --tta`: the paper's multi-scale test, ratios 0.75..1.25, with flip.
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
