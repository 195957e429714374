# UperNet 160k on ADE20K with EfficientVMamba-B: the EfficientVMamba-T recipe.
# Paper: 46.5 mIoU (SS) / 47.3 (MS).
_base_ = ['./upernet_efficient-vmamba-t_8xb2-160k_ade20k-512x512.py']
checkpoint = 'pretrained/efficient_vmamba_base.ckpt'  # https://huggingface.co/TerryPei/EfficientVMamba-Base

model = dict(
    backbone=dict(model_name='efficient_vmamba_base', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
