# Mask R-CNN 1x on COCO with EfficientVMamba-B: the EfficientVMamba-T recipe.
# The official detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2292_96.py trains 36 epochs with
# multi-scale crops (a 3x schedule) although the paper reports 1x; this is the 1x recipe of the paper.
# Paper: 43.7 box AP / 40.2 mask AP.
_base_ = ['./mask-rcnn_efficient-vmamba-t_fpn_1x_coco.py']
checkpoint = 'pretrained/efficient_vmamba_base.ckpt'  # https://huggingface.co/TerryPei/EfficientVMamba-Base

model = dict(
    backbone=dict(model_name='efficient_vmamba_base', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))
