# Mask R-CNN 3x multi-scale + crop on COCO with VMamba-S[s2l15], drop path 0.3
# (official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small_ms_3x.py). Official: 49.9 box AP / 44.2 mask AP.
_base_ = ['./mask-rcnn_vmamba-t-s1l8_fpn_ms-crop-3x_coco.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_small_s2l15',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[96, 192, 384, 768]))
