# Mask R-CNN 1x on COCO with VMamba-B[s2l15]: the VMamba-T recipe with drop path 0.6 and 128-wide stem
# (official detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_base.py). Official: 49.2 box AP / 44.1 mask AP.
_base_ = ['./mask-rcnn_vmamba-t-s1l8_fpn_1x_coco.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
