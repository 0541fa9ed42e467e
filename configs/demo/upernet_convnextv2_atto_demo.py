# `make demo`: UperNet + ConvNeXt V2-Atto trained from scratch on the synthetic ADE20K-layout set that
# `tools/make_demo_data.py` writes (5 real ADE20K classes: a textured 'wall' background and four shapes).
# It runs the real dataset class and pipeline on the CPU in minutes; nothing is downloaded. The heads keep
# the base's SyncBN: BN on one process or on CPUs (tools/train.py), in step across GPUs under dist_train.sh.
_base_ = ['../_base_/upernet_convnextv2.py', '../_base_/ade20k_160k.py']

data_root = 'data/demo/ade/ADEChallengeData2016'
classes = ('wall', 'building', 'sky', 'floor', 'tree')
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', drop_path_rate=0.0, compile=False, init_cfg=None),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=64, num_classes=len(classes)),
    auxiliary_head=dict(in_channels=160, channels=32, num_classes=len(classes)),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# `tools/test.py --tta`: the base's ratios (0.75..1.25) of this demo's test size instead of ADE20K's 2048x512
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(round(crop_size[0] * r), round(crop_size[1] * r)), keep_ratio=True)
         for r in _base_.img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(batch_size=8, num_workers=2, persistent_workers=True,
                        dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=2, persistent_workers=True,
                      dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=150)
# the recipe's optimizer and layer decay (adamw_layer_decay.py), in fp32, at this batch's lr; the base's bf16
# AMP wrapper is replaced whole, as a plain OptimWrapper takes no dtype
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(_base_.optim_wrapper.optimizer, lr=2e-3),
                     constructor=_base_.optim_wrapper.constructor, paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=150, max_keep_ckpts=2, save_best='mIoU'))
visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])
randomness = dict(seed=0)
