# RetinaNet 1x (12 epochs) on COCO with VMamba-T[s1l8], 8 GPUs x 2 images.
# VMamba publishes no RetinaNet config. This uses the VMamba Mask R-CNN 1x recipe (AdamW lr 1e-4, weight decay
# 0.05, none on norms, drop path 0.2, 1000-iter warm-up, steps at 8/11) with mmdet's Swin-T RetinaNet layout:
# levels 1-3 (strides 8-32) feed the FPN, which adds P6/P7 from its input ('on_input'). Level 0 is left out so that
# no backbone output goes unused (DDP would otherwise need find_unused_parameters).
_base_ = [
    '../_base_/models/retinanet_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/det_runtime.py',
]
# Official ImageNet-1K checkpoint (converted by checkpoint_filter_fn); it also pickles its yacs training config,
# hence weights_only=False (trusted source: the VMamba GitHub release).
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_tiny_s1l8',
        out_indices=(1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[192, 384, 768], start_level=0, add_extra_convs='on_input', num_outs=5))

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
