# UperNet on ADE20K 512x512 with Vim-S, following the official hustvl/Vim segmentation recipe
# (seg/configs/vim/upernet/upernet_vim_small_24_512_slide_60k.py + seg/scripts/ft_vim_small_upernet.sh, mmseg 0.29):
# - backbone: Vim-S at img_size 512; VisionMambaSeg never inserts the class token, so class_token=False; drop path 0.1
#   (VisionMamba default); residual stream in float32; the script sets use_residual_as_feature=True and
#   last_layer_process='add', i.e. the features are the residual stream after blocks [5, 11, 17, 23]
#   (intermediate_source='residual'), then the ViTDet-like deconv / max-pool pyramid (strides 4/8/16/32);
# - UPerHead with channels=384, FCN auxiliary head on level 2, SyncBN;
# - AdamW lr 1e-4, weight decay 0.05, layer decay 0.95 (script override of 0.92), 1500-iter linear warm-up
#   (ratio 1e-6) then poly (power 1.0, min 0), 60k iterations, 4 GPUs x 8 images, fp32, sliding-window test.
# Official layer decay quirk, reproduced (see the Vim-Ti config): only patch_embed / pos_embed get lr x 0.95**25.
# Deviations: the official Vim-S segmentation config enables RoPE (if_rope=True, if_rope_residual=True), which
# vmamba_zoo does not implement; the pyramid BN is BatchNorm2d (convert to SyncBN for multi-GPU); the checkpoint's
# position embedding drops the middle class entry (the official loader drops entry 0).
# pretrained_strict=False: the pyramid deconvs/BN are new weights, absent from the classification checkpoint.
# Paper (160k iterations): 44.9 mIoU; the official repository trains 60k iterations.
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/seg_runtime.py',
]
custom_imports = dict(imports=['vmamba_zoo.mm'], allow_failed_imports=False)
crop_size = (512, 512)
checkpoint = 'pretrained/vim_s_midclstok_80p5acc.pth'  # https://huggingface.co/hustvl/Vim-small-midclstok
embed_dim = 384
layer_decay_rate, num_layers = 0.95, 24
stem_lr_mult = layer_decay_rate ** (num_layers + 1)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='ZooBackbone',
        model_name='vim_small_patch16_224',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        pretrained_strict=False,
        model_kwargs=dict(img_size=512, class_token=False, residual_in_fp32=True, intermediate_source='residual'),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

train_dataloader = dict(batch_size=8)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

max_iters = 60000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=1000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=4,
                                     save_best='mIoU'))
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0,
        custom_keys={
            'patch_embed.proj.weight': dict(lr_mult=stem_lr_mult),
            'patch_embed.proj.bias': dict(lr_mult=stem_lr_mult, decay_mult=0.0),
            'pos_embed': dict(lr_mult=stem_lr_mult),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
