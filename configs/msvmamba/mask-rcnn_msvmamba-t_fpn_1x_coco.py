# Mask R-CNN 1x (12 epochs) on COCO with MSVMamba-Tiny, 16 images per iteration.
# Official detection/configs/ms_vssm/mask_rcnn_ms_vssm_fpn_coco_tiny.py: the Swin-T Mask R-CNN 1x recipe (AdamW lr
# 1e-4, betas (0.9, 0.999), weight decay 0.05 with none on norms, 1000-iter warm-up, lr x0.1 at epochs 8 and 11),
# drop path 0.2 (inherited from the Swin-T backbone dict), a LayerNorm on every output (outnorm{i}).
# Official result (README): 46.9 box AP / 42.2 mask AP.
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/det_runtime.py',
    '../_base_/schedules/adamw_1x.py',
]
# Official ImageNet-1K weights (README "log&ckpt" Google Drive folder), downloaded by hand; the model's
# checkpoint_filter_fn converts them on load.
checkpoint = 'pretrained/vssm_tiny_ms_e300.pth'

model = dict(
    backbone=dict(
        model_name='msvmamba_tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))
