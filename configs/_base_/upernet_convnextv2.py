# UperNet with a ConvNeXt V2 backbone: mmseg's own UperNet, backbone swapped, UPerHead 512 channels on all
# four stages, FCN auxiliary head on stage 3 (loss weight 0.4), sliding-window test (512 crops, stride 341),
# 150 ADE20K classes. A leaf sets arch, channels, drop path and checkpoint; a recipe file (ade20k_160k.py)
# sets data, schedule and optimizer.
_base_ = 'mmseg::_base_/models/upernet_r50.py'
custom_imports = dict(imports=['convnextv2_dense'], allow_failed_imports=False)

num_classes = 150
model = dict(
    # mmseg's EncoderDecoder whose training step replays a CUDA graph of forward + loss + backward on the
    # fixed-size crops (convnextv2_dense.mm.graph_step): same model and checkpoints; eager on the CPU.
    # cuda_graph=False: the stock step.
    type='GraphedEncoderDecoder',
    cuda_graph=True,
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ConvNeXtV2',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        # torch.compile of the backbone's training steps (test, inference, get_flops and export stay eager).
        # Off: the CUDA graph step above already removes the launch overhead compile saved (UperNet-B step on
        # an H200: eager 82.6, compile 64.5, graph 38.2 ms; README "Speed"), without a minute of compiling.
        compile=False),
    # UPerHead / FCNHead with exact faster resizes and acc_seg in training (convnextv2_dense.mm.fast_heads).
    decode_head=dict(type='UPerHeadFast', in_channels=[128, 256, 512, 1024], channels=512, num_classes=num_classes),
    auxiliary_head=dict(type='FCNHeadFast', in_channels=512, in_index=2, channels=256, num_classes=num_classes,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
# Multi-GPU jobs (tools/dist_train.sh): mmengine's DDP wrapper, except that it runs the graph step above with
# the gradients averaged after backward (convnextv2_dense.mm.graph_ddp); a single process ignores this.
model_wrapper_cfg = dict(type='GraphedDistributedDataParallel', broadcast_buffers=False,
                         find_unused_parameters=False)
