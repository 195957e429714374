# UperNet 160k on ADE20K 512x512 with VMamba-S[s2l15]: the VMamba-T recipe with drop path 0.3
# (official segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_small.py). Official: 50.6 / 51.2 mIoU.
_base_ = ['./upernet_vmamba-t-s1l8_4xb4-160k_ade20k-512x512.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_small_s2l15',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
