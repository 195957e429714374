# UperNet on ADE20K 512x512 with Vim-Ti, following the official hustvl/Vim segmentation recipe
# (seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py + seg/scripts/ft_vim_tiny_upernet.sh, mmseg 0.29):
# - backbone: Vim-Ti at img_size 512 without the class token (if_cls_token=False), drop path 0.1 (VisionMamba default),
#   residual stream in the input dtype (residual_in_fp32=False), features = mixer outputs of blocks [5, 11, 17, 23]
#   turned into strides 4/8/16/32 by the ViTDet-like deconv / max-pool pyramid (vmamba_zoo VimFeaturePyramid);
# - UPerHead with channels=192, FCN auxiliary head on level 2, SyncBN;
# - AdamW lr 2e-4 (script override), weight decay 0.1 (script override), layer decay 0.92 over 24 layers,
#   1500-iter linear warm-up (ratio 1e-6) then poly (power 1.0, min 0), 60k iterations, 4 GPUs x 8 images, fp32,
#   sliding-window test (crop 512, stride 341).
# Official layer decay quirk, reproduced: its constructor looks for 'backbone.blocks.N' but Vim's blocks are
# 'backbone.layers.N', so every block and both heads get layer id 25 (lr x1) and only patch_embed / pos_embed get
# layer id 0 (lr x 0.92**25); weight decay applies to every >=2-D tensor (pos_embed and A_log included) and not to
# 1-D tensors or biases.
# Deviations: the pyramid's BN is BatchNorm2d where the official uses SyncBatchNorm (set env_cfg sync_bn='torch'
# or convert for multi-GPU training); the checkpoint's position embedding drops the middle class entry (the
# official loader drops entry 0).
# pretrained_strict=False: the pyramid deconvs/BN are new weights, absent from the classification checkpoint (as
# in the official fine-tuning); the load report lists them as missing.
# Paper (160k iterations): 41.0 mIoU; the official repository trains 60k iterations.
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/seg_runtime.py',
]
custom_imports = dict(imports=['vmamba_zoo.mm'], allow_failed_imports=False)
crop_size = (512, 512)
checkpoint = 'pretrained/vim_t_midclstok_76p1acc.pth'  # https://huggingface.co/hustvl/Vim-tiny-midclstok
embed_dim = 192
layer_decay_rate, num_layers = 0.92, 24
stem_lr_mult = layer_decay_rate ** (num_layers + 1)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='ZooBackbone',
        model_name='vim_tiny_patch16_224',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        pretrained_strict=False,
        model_kwargs=dict(img_size=512, class_token=False, residual_in_fp32=False, intermediate_source='mixer'),
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
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.1),
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
