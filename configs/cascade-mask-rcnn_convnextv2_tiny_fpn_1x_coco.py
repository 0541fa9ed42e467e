_base_ = ['./_base_/cascade-mask-rcnn_convnextv2_fpn.py', './_base_/coco_instance_1x.py']

# ConvNeXt V2-Tiny in mmdet's Cascade Mask R-CNN, ImageNet-1K fine-tuned weights; another checkpoint:
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
arch, channels, drop_path_rate = 'tiny', (96, 192, 384, 768), 0.2
checkpoint = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt'
model = dict(
    backbone=dict(arch=arch, drop_path_rate=drop_path_rate, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=list(channels)))
