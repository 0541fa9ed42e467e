_base_ = ['./_base_/mask-rcnn_convnextv2_fpn.py', './_base_/coco_instance_1x.py']

# ConvNeXt V2-Nano, ImageNet-1K fine-tuned weights; another checkpoint (a path, URL or HF repo id):
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
arch, channels, drop_path_rate = 'nano', (80, 160, 320, 640), 0.2
checkpoint = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_nano_1k_224_ema.pt'
model = dict(
    backbone=dict(arch=arch, drop_path_rate=drop_path_rate, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=list(channels)))
