# UperNet on a tiny zoo backbone, trained for a few dozen CPU iterations on the generated shapes set
# (python tools/make_smoke_data.py --out data/smoke). Proves the mmseg path end to end; not a benchmark.
# No random augmentation and no dropout, so a resumed run repeats the uninterrupted one exactly.
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/seg_runtime.py',
    './_base_/tiny_backbone.py',
    './_base_/smoke_schedule.py',
]

data_root = 'data/smoke/seg/'
classes = ('background', 'circle', 'rectangle', 'triangle', 'ellipse')
palette = [[255, 255, 255], [220, 20, 60], [0, 128, 0], [0, 0, 192], [255, 165, 0]]
crop_size = (64, 64)
# Plain BN: SyncBN needs GPUs (the Runner reverts it only when not distributed).
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ZooBackbone',
        model_name={{_base_.tiny_model_name}},
        model_kwargs={{_base_.tiny_model_kwargs}},
        drop_path_rate={{_base_.tiny_drop_path_rate}},
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d'),
    decode_head=dict(
        in_channels={{_base_.tiny_channels}},
        channels=32,
        dropout_ratio=0.0,
        num_classes=len(classes),
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels={{_base_.tiny_aux_channels}},
        channels=16,
        dropout_ratio=0.0,
        num_classes=len(classes),
        norm_cfg=norm_cfg))

pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    img_suffix='.png',
    seg_map_suffix='.png',
    metainfo=dict(classes=classes, palette=palette),
    pipeline=pipeline)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train')))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Test-time augmentation for tools/test.py --tta: original + horizontal flip.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
             dict(type='RandomFlip', prob=1.0, direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]

# Loss of every iteration in the log and scalars.json; one checkpoint at the end.
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval={{_base_.max_iters}}))
log_processor = dict(by_epoch=False, window_size=1)
