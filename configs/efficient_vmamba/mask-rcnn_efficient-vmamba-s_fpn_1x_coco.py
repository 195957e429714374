# Mask R-CNN 1x on COCO with EfficientVMamba-S: the EfficientVMamba-T recipe.
# Fixed official bug: detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2242_96.py builds a 96-wide
# backbone, but the released small checkpoint is 64 wide (dims 64, 11.27M params per its training log).
# Paper: 39.3 box AP / 36.7 mask AP.
_base_ = ['./mask-rcnn_efficient-vmamba-t_fpn_1x_coco.py']
checkpoint = 'pretrained/efficient_vmamba_small.ckpt'  # https://huggingface.co/TerryPei/EfficientVMamba-Small

model = dict(
    backbone=dict(model_name='efficient_vmamba_small', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
