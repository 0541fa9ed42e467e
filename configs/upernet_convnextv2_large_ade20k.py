_base_ = ['./_base_/upernet_convnextv2.py', './_base_/ade20k_160k.py']

# ConvNeXt V2-Large, ImageNet-1K fine-tuned weights; another checkpoint (a path, URL or HF repo id):
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
arch, channels, drop_path_rate = 'large', (192, 384, 768, 1536), 0.4
checkpoint = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_large_1k_224_ema.pt'
model = dict(
    backbone=dict(arch=arch, drop_path_rate=drop_path_rate, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=list(channels)),
    auxiliary_head=dict(in_channels=channels[2]))
