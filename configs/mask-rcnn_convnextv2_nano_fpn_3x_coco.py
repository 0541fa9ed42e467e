_base_ = ['./_base_/mask-rcnn_convnextv2_fpn.py', './_base_/coco_instance_lsj_3x.py']

# ConvNeXt V2-Nano, started as in the paper: ImageNet-1K FCMAE pre-training only, no fine-tuning.
# From the IN-1K fine-tuned weights: mask-rcnn_convnextv2_nano-in1k-ft-pre_fpn_3x_coco.py.
# Another checkpoint (a path, URL or HF repo id): --cfg-options model.backbone.init_cfg.checkpoint=PATH
arch, channels, drop_path_rate = 'nano', (80, 160, 320, 640), 0.2
checkpoint = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_nano_1k_224_fcmae.pt'
model = dict(
    backbone=dict(arch=arch, drop_path_rate=drop_path_rate, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=list(channels)))
