# Mask R-CNN 1x (12 epochs) on COCO with VMamba-T[s1l8], 8 GPUs x 2 images.
# Hyper-parameters of official VMamba detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny.py, which overrides the
# Swin-T Mask R-CNN 1x config: AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 (none on norms), 1000-iter
# linear warm-up, lr x0.1 at epochs 8 and 11, drop path 0.2, per-output LayerNorm (outnorm{i}).
# Official result: 47.3 box AP / 42.7 mask AP (VMamba README).
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/det_runtime.py',
    '../_base_/schedules/adamw_1x.py',
]
# Official ImageNet-1K classification checkpoint, converted by the model's checkpoint_filter_fn on load. It also
# pickles its yacs training config, hence weights_only=False (trusted source: the VMamba GitHub release).
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[96, 192, 384, 768]))
