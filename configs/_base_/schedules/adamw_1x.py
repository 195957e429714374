# The Swin-T 1x detection recipe of the VMamba-family configs: AdamW lr 1e-4 for 16 images per iteration
# (--auto-scale-lr rescales it for other totals), betas (0.9, 0.999), weight decay 0.05 with none on norms,
# 1000-iteration linear warm-up, 12 epochs with lr x0.1 at epochs 8 and 11.
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
