# UperNet 160k on ADE20K 512x512 with EfficientVMamba-T, 16 images per iteration.
# The official repository has no segmentation configs; this follows the Swin-T UperNet recipe its detection configs
# and the paper build on (AdamW lr 6e-5, weight decay 0.01 with none on norms, 1500-iter warm-up, poly decay), with the
# drop path 0.2 of its detection configs and a LayerNorm on every output as in its backbone wrapper.
# Paper: 38.9 mIoU (SS) / 39.3 (MS).
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/seg_runtime.py',
    '../_base_/schedules/adamw_160k.py',
]
crop_size = (512, 512)
checkpoint = 'pretrained/efficient_vmamba_tiny.ckpt'  # https://huggingface.co/TerryPei/EfficientVMamba-Tiny

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name='efficient_vmamba_tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[48, 96, 192, 384], num_classes=150),
    auxiliary_head=dict(in_channels=192, num_classes=150))

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
