# Mask R-CNN on a tiny zoo backbone, trained for a few dozen CPU iterations on the generated shapes set
# (python tools/make_smoke_data.py --out data/smoke). Proves the mmdet path end to end; not a benchmark.
_base_ = [
    '../_base_/models/mask_rcnn_fpn.py',
    '../_base_/det_runtime.py',
    './_base_/tiny_backbone.py',
    './_base_/smoke_schedule.py',
]

data_root = 'data/smoke/det/'
classes = ('circle', 'rectangle', 'triangle', 'ellipse')
image_size = (64, 64)
head_channels = 32

model = dict(
    backbone=dict(
        _delete_=True,
        type='ZooBackbone',
        model_name={{_base_.tiny_model_name}},
        model_kwargs={{_base_.tiny_model_kwargs}},
        drop_path_rate={{_base_.tiny_drop_path_rate}},
        out_indices=(0, 1, 2, 3),
        out_norm='ln2d'),
    neck=dict(in_channels={{_base_.tiny_channels}}, out_channels=head_channels),
    # Anchors of 8..128 px fit the 64 px images (COCO's scale 8 starts at 32 px).
    rpn_head=dict(
        in_channels=head_channels,
        feat_channels=head_channels,
        anchor_generator=dict(scales=[2])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=head_channels),
        bbox_head=dict(in_channels=head_channels, fc_out_channels=64, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=head_channels),
        mask_head=dict(
            num_convs=2, in_channels=head_channels, conv_out_channels=head_channels, num_classes=len(classes))),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
dataset = dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **dataset,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator

# Loss of every iteration in the log and scalars.json; one checkpoint at the end.
default_hooks = dict(
    logger=dict(interval=1, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval={{_base_.max_iters}}))
log_processor = dict(by_epoch=False, window_size=1)
