# Mask R-CNN 1x on COCO with VMamba-S[s2l15]: the VMamba-T recipe with drop path 0.3
# (official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_small.py). Official: 48.7 box AP / 43.7 mask AP.
_base_ = ['./mask-rcnn_vmamba-t-s1l8_fpn_1x_coco.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_small_s2l15',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[96, 192, 384, 768]))
