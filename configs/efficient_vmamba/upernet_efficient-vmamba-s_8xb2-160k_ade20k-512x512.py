# UperNet 160k on ADE20K with EfficientVMamba-S (64 wide, as released): the EfficientVMamba-T recipe.
# Paper: 41.5 mIoU (SS) / 42.1 (MS).
_base_ = ['./upernet_efficient-vmamba-t_8xb2-160k_ade20k-512x512.py']
checkpoint = 'pretrained/efficient_vmamba_small.ckpt'  # https://huggingface.co/TerryPei/EfficientVMamba-Small

model = dict(
    backbone=dict(model_name='efficient_vmamba_small', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
