# Mask R-CNN 1x on COCO with MSVMamba-Nano: the MSVMamba-Tiny recipe
# (official detection/configs/ms_vssm/mask_rcnn_ms_vssm_fpn_coco_nano.py; no published result).
_base_ = ['./mask-rcnn_msvmamba-t_fpn_1x_coco.py']
checkpoint = 'pretrained/vssm_nano_ms_e300.pth'

model = dict(
    backbone=dict(model_name='msvmamba_nano', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[48, 96, 192, 384]))
