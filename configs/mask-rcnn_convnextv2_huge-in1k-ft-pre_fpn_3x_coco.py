_base_ = './mask-rcnn_convnextv2_huge_fpn_3x_coco.py'

# The paper's COCO recipe, started from ConvNeXt V2-Huge's ImageNet-1K fine-tuned weights (FCMAE, then
# supervised IN-1K) instead of the FCMAE pre-training the paper used; no result is published for this start.
checkpoint = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_huge_1k_224_ema.pt'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
