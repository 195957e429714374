# Mask R-CNN 3x multi-scale + crop on COCO with VMamba-B[s2l15].
# VMamba publishes no 3x config or result for B: this applies the T/S 3x recipe with B's 1x drop path (0.6).
_base_ = ['./mask-rcnn_vmamba-t-s1l8_fpn_ms-crop-3x_coco.py']
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'  # noqa

model = dict(
    backbone=dict(
        model_name='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
