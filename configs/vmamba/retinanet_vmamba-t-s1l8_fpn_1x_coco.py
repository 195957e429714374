# RetinaNet 1x (12 epochs) on COCO with VMamba-T[s1l8], 8 GPUs x 2 images.
# VMamba publishes no RetinaNet config. This uses the VMamba Mask R-CNN 1x recipe (AdamW lr 1e-4, weight decay
# 0.05, none on norms, drop path 0.2, 1000-iter warm-up, steps at 8/11) with mmdet's Swin-T RetinaNet layout:
# levels 1-3 (strides 8-32) feed the FPN, which adds P6/P7 from its input ('on_input'). Level 0 is left out so that
# no backbone output goes unused (DDP would otherwise need find_unused_parameters).
_base_ = [
    '../_base_/models/retinanet_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/det_runtime.py',
    '../_base_/schedules/adamw_1x.py',
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
