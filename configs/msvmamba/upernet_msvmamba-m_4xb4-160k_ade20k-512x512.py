# UperNet 160k on ADE20K with MSVMamba-Micro: the MSVMamba-Tiny recipe with drop path 0.3 (the official
# upernet_ms_vssm_4xb4-160k_ade20k-512x512_micro.py inherits the Swin-T backbone's 0.3). Official (README): 45.1 / 45.4.
_base_ = ['./upernet_msvmamba-t_4xb4-160k_ade20k-512x512.py']
checkpoint = 'pretrained/vssm_micro_ms_e300.pth'

model = dict(
    backbone=dict(
        model_name='msvmamba_micro', drop_path_rate=0.3, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
