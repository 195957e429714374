# UperNet 160k on ADE20K with MSVMamba-Nano: the MSVMamba-Tiny recipe with drop path 0.3 (the official
# upernet_ms_vssm_4xb4-160k_ade20k-512x512_nano.py inherits the Swin-T backbone's 0.3). No published result.
_base_ = ['./upernet_msvmamba-t_4xb4-160k_ade20k-512x512.py']
checkpoint = 'pretrained/vssm_nano_ms_e300.pth'

model = dict(
    backbone=dict(
        model_name='msvmamba_nano', drop_path_rate=0.3, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
