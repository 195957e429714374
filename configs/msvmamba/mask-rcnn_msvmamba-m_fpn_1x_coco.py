# Mask R-CNN 1x on COCO with MSVMamba-Micro: the MSVMamba-Tiny recipe
# (official detection/configs/ms_vssm/mask_rcnn_ms_vssm_fpn_coco_micro.py). Official (README): 43.8 / 39.9.
_base_ = ['./mask-rcnn_msvmamba-t_fpn_1x_coco.py']
checkpoint = 'pretrained/vssm_micro_ms_e300.pth'

model = dict(
    backbone=dict(model_name='msvmamba_micro', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
