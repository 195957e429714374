# UperNet 160k on ADE20K 512x512 with VMamba-B[s2l15]: the VMamba-T recipe with drop path 0.6 and 128-wide stem
# (official segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_base.py). Official: 51.0 / 51.6 mIoU.
_base_ = ['./upernet_vmamba-t-s1l8_4xb4-160k_ade20k-512x512.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
