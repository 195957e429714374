# UperNet 160k on ADE20K 512x512 with MSVMamba-Tiny, 16 images per iteration (official: 4 GPUs x 4).
# Official segmentation/configs/ms_vssm/upernet_ms_vssm_4xb4-160k_ade20k-512x512_tiny.py: the Swin-T UperNet recipe
# (AdamW lr 6e-5, weight decay 0.01 with none on norms, 1500-iter warm-up, poly decay), drop path 0.2, a LayerNorm on
# every output. Official (README): 47.8 mIoU (SS).
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/seg_runtime.py',
    '../_base_/schedules/adamw_160k.py',
]
crop_size = (512, 512)
checkpoint = 'pretrained/vssm_tiny_ms_e300.pth'

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        model_name='msvmamba_tiny',
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
