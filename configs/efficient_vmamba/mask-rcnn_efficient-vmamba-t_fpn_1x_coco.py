# Mask R-CNN 1x (12 epochs) on COCO with EfficientVMamba-T, 16 images per iteration.
# Official detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2242_48.py: the Swin-T Mask R-CNN 1x recipe
# (AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 with none on norms, 1000-iter warm-up, lr x0.1 at epochs 8
# and 11), drop path 0.2 (inherited from the Swin-T backbone dict), AMP, a LayerNorm on every output (outnorm{i}).
# Fixed official bugs: it builds depths (2, 2, 9, 2) around the tiny checkpoint (released tiny is (2, 2, 4, 2)) and
# keeps the Swin-T neck in_channels [96, 192, 384, 768] for a 48-wide backbone.
# Paper: 35.6 box AP / 33.2 mask AP.
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/det_runtime.py',
    '../_base_/schedules/adamw_1x.py',
]
# Official ImageNet-1K weights (https://huggingface.co/TerryPei/EfficientVMamba-Tiny), downloaded by hand; the
# model's checkpoint_filter_fn converts them on load.
checkpoint = 'pretrained/efficient_vmamba_tiny.ckpt'

model = dict(
    backbone=dict(
        model_name='efficient_vmamba_tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[48, 96, 192, 384]))

# This recipe trains with mixed precision (the only difference from the shared 1x schedule).
optim_wrapper = dict(type='AmpOptimWrapper')
