# The optimizer of every recipe here (Woo et al., 2023, appendix): AdamW, weight decay 0.05, layer-wise lr
# decay through our constructor (GRN, norms and biases get no weight decay), mixed precision. A recipe file
# inherits this beside mmdet's / mmseg's dataset and runtime bases and sets only what differs (lr decay
# rate, AMP dtype, batch).
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True),  # one kernel a group
    constructor='ConvNeXtV2LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
# The lr is for 16 images per iteration; `--auto-scale-lr` scales it to the real batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
