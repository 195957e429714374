"""Generate the tiny detection and segmentation sets the smoke configs train on, from pip-shipped code only.

Shapes come from scikit-image's ``skimage.draw.random_shapes`` (one shape per call, composited without overlap, so
every instance mask is exact); masks are RLE-encoded with pycocotools. Nothing is downloaded.

Layout under ``--out`` (default ``data/smoke``, the smoke configs' ``data_root``)::

    det/{train,val}/*.png            det/annotations/{train,val}.json   (COCO: boxes, RLE masks, 4 classes)
    seg/img_dir/{train,val}/*.png    seg/ann_dir/{train,val}/*.png      (labels 0 = background, 1..4 = shapes)

Usage::

    python tools/make_smoke_data.py --out data/smoke
"""
import argparse
import json
import os
from typing import List, Tuple

import numpy as np

SHAPE_CLASSES = ('circle', 'rectangle', 'triangle', 'ellipse')


def random_scene(size: int, rng: np.random.Generator,
                 max_shapes: int = 4) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one image of non-overlapping coloured shapes on a white background.

    Args:
        size: Height and width in pixels.
        rng: Random generator (the scene is a pure function of its state).
        max_shapes: Upper bound on shapes per image; at least one is always drawn.

    Returns:
        ``(image, instances)``: the HxWx3 uint8 image and a list of ``(class_index, bool mask)``.
    """
    from skimage.draw import random_shapes

    image = np.full((size, size, 3), 255, dtype=np.uint8)
    occupied = np.zeros((size, size), dtype=bool)
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(10):
            shape_image, labels = random_shapes(
                (size, size), max_shapes=1, min_shapes=1, min_size=size // 6, max_size=size // 2,
                intensity_range=((0, 200),) * 3, rng=int(rng.integers(2**31)), channel_axis=-1)
            if not labels:
                continue
            mask = (shape_image != 255).any(-1)
            # Tiny slivers (a shape clipped by the border) make degenerate boxes; keep shapes that overlap nothing.
            if mask.sum() < (size // 8) ** 2 or (mask & occupied).any():
                continue
            image[mask] = shape_image[mask]
            occupied |= mask
            instances.append((SHAPE_CLASSES.index(labels[0][0]), mask))
            break
    if not instances:  # every attempt failed: retry the scene rather than emit an empty image
        return random_scene(size, rng, max_shapes)
    return image, instances


def make_detection_set(root: str, num_train: int = 16, num_val: int = 8, size: int = 64, seed: int = 0) -> str:
    """Write a COCO-format instance-segmentation set (boxes + RLE masks) under ``root``.

    Args:
        root: Output folder (``det/`` of the smoke data root).
        num_train: Training images.
        num_val: Validation images.
        size: Image side in pixels.
        seed: Seed of the generator.

    Returns:
        ``root``.
    """
    import cv2
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            image, instances = random_scene(size, rng)
            file_name = f'{image_id:04d}.png'
            cv2.imwrite(os.path.join(root, split, file_name), image[:, :, ::-1])
            images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
            for class_index, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id, category_id=class_index + 1, iscrowd=0,
                    area=float(mask_utils.area(rle)), bbox=[float(v) for v in mask_utils.toBbox(rle)],
                    segmentation=dict(size=rle['size'], counts=rle['counts'].decode('ascii'))))
        categories = [dict(id=i + 1, name=name) for i, name in enumerate(SHAPE_CLASSES)]
        with open(os.path.join(root, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return root


def make_segmentation_set(root: str, num_train: int = 16, num_val: int = 8, size: int = 64, seed: int = 1) -> str:
    """Write a semantic-segmentation set (PNG images + PNG label maps, 0 = background) under ``root``.

    Args:
        root: Output folder (``seg/`` of the smoke data root).
        num_train: Training images.
        num_val: Validation images.
        size: Image side in pixels.
        seed: Seed of the generator.

    Returns:
        ``root``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, 'img_dir', split), exist_ok=True)
        os.makedirs(os.path.join(root, 'ann_dir', split), exist_ok=True)
        for index in range(count):
            image, instances = random_scene(size, rng)
            label = np.zeros((size, size), dtype=np.uint8)
            for class_index, mask in instances:
                label[mask] = class_index + 1
            cv2.imwrite(os.path.join(root, 'img_dir', split, f'{index:04d}.png'), image[:, :, ::-1])
            cv2.imwrite(os.path.join(root, 'ann_dir', split, f'{index:04d}.png'), label)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/smoke', help='data root of the smoke configs')
    parser.add_argument('--num-train', type=int, default=16)
    parser.add_argument('--num-val', type=int, default=8)
    args = parser.parse_args(argv)
    make_detection_set(os.path.join(args.out, 'det'), args.num_train, args.num_val)
    make_segmentation_set(os.path.join(args.out, 'seg'), args.num_train, args.num_val)
    print(f'smoke data written to {args.out}')


if __name__ == '__main__':
    main()
