# UperNet 160k on ADE20K 512x512 with VMamba-T[s1l8], 16 images per iteration (4 GPUs x 4, as the official name;
# on 8 GPUs set train_dataloader.batch_size=2).
# Hyper-parameters of official VMamba segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py, which
# overrides mmseg's Swin-T UperNet 160k config: AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01 (none on norms),
# 1500-iter linear warm-up from 1e-6, then poly (power 1) to 0 at 160k, drop path 0.2, per-output LayerNorm.
# Official result: 47.9 mIoU single-scale / 48.8 multi-scale (tools/test.py --tta).
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/seg_runtime.py',
    '../_base_/schedules/adamw_160k.py',
]
# Official ImageNet-1K checkpoint (converted by checkpoint_filter_fn); it also pickles its yacs training config,
# hence weights_only=False (trusted source: the VMamba GitHub release).
checkpoint = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'  # noqa
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint, weights_only=False)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
