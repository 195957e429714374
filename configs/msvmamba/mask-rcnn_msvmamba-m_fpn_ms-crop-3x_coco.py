# Mask R-CNN 3x on COCO with MSVMamba-Micro: the MSVMamba-Tiny 3x recipe
# (official detection/configs/ms_vssm/mask_rcnn_ms_vssm_fpn_coco_micro_3x.py). Official (README): 46.3 / 41.8.
_base_ = ['./mask-rcnn_msvmamba-t_fpn_ms-crop-3x_coco.py']
checkpoint = 'pretrained/vssm_micro_ms_e300.pth'

model = dict(
    backbone=dict(model_name='msvmamba_micro', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
