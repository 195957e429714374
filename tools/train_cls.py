"""Image classification training for vmamba_zoo models, in the spirit of timm's train.py.

AdamW with linear warm-up and cosine decay, label smoothing, mixed precision where the device supports it, optional
EMA of the weights, checkpoints (``last.pth``, ``best.pth``) with ``--resume``, DDP through ``torchrun``, a progress
bar and a metrics log (``metrics.csv`` in the output folder).

With no arguments it trains a small VMamba (``vmamba_tiny_s1l8`` with depths 1-1-2-1 and 32 channels) on
scikit-learn's handwritten digits, resized from 8x8 to 32x32, with a stratified 20 % held-out split, and prints the
validation accuracy: the quickest proof that the whole stack, kernels included, learns::

    python tools/train_cls.py
    torchrun --nproc_per_node 2 tools/train_cls.py        # DDP (gloo on CPU, nccl on GPU)
    python tools/train_cls.py --data-dir /data/imagenet --model vmamba_tiny_s1l8 --img-size 224 \\
        --epochs 300 --batch-size 128 --lr 1e-3 --ema --amp on   # ImageFolder layout: train/ and val/
"""
import argparse
import csv
import math
import os
import sys
import time
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import timm
from timm.utils import ModelEmaV3

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

if __package__ in (None, ''):  # run as a script from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vmamba_zoo  # noqa: E402,F401  (registers the models)

DIGITS_MEAN, DIGITS_STD = 0.3, 0.37  # of sklearn digits scaled to [0, 1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a vmamba_zoo classifier (default: a small VMamba on '
                                                 'scikit-learn digits).')
    data = parser.add_argument_group('data')
    data.add_argument('--data-dir', default='', help='ImageFolder root with train/ and val/ (default: sklearn digits)')
    data.add_argument('--img-size', type=int, default=32, help='input size (digits are resized to it)')
    data.add_argument('--val-fraction', type=float, default=0.2, help='held-out fraction of the digits')
    data.add_argument('--train-limit', type=int, default=0, help='use only the first N training samples (0: all)')
    data.add_argument('--workers', type=int, default=0, help='data loader workers')
    model = parser.add_argument_group('model')
    model.add_argument('--model', default='vmamba_tiny_s1l8', help='timm model name')
    model.add_argument('--depths', type=int, nargs='+', default=None,
                       help='override the blocks per stage (digits default: 1 1 2 1)')
    model.add_argument('--dims', type=int, default=None, help='override the first-stage channels (digits: 32)')
    model.add_argument('--drop-path', type=float, default=None, help='drop path rate (digits default: 0.05)')
    model.add_argument('--pretrained', action='store_true', help='start from the pretrained weights')
    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--epochs', type=int, default=6)
    optim.add_argument('--batch-size', type=int, default=32, help='per process')
    optim.add_argument('--lr', type=float, default=2e-3, help='peak learning rate')
    optim.add_argument('--min-lr', type=float, default=1e-5)
    optim.add_argument('--weight-decay', type=float, default=0.05)
    optim.add_argument('--warmup-epochs', type=float, default=0.5)
    optim.add_argument('--label-smoothing', type=float, default=0.1)
    optim.add_argument('--clip-grad', type=float, default=5.0, help='max grad norm (0: off)')
    optim.add_argument('--amp', choices=('auto', 'on', 'off'), default='auto',
                       help='mixed precision: auto = on for CUDA (bf16 if supported, else fp16), off on CPU')
    optim.add_argument('--ema', action='store_true', help='keep and evaluate an EMA of the weights')
    optim.add_argument('--ema-decay', type=float, default=0.998)
    run = parser.add_argument_group('run')
    run.add_argument('--output', default='work_dirs/train_cls', help='checkpoints and metrics.csv go here')
    run.add_argument('--resume', default='', help='checkpoint to resume from (e.g. work_dirs/train_cls/last.pth)')
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--device', default='', help="'cpu', 'cuda' (default: cuda when available)")
    run.add_argument('--threads', type=int, default=None,
                     help='CPU threads per process (default: 1 for the digits run, whose small tensors gain little '
                          'from more and lose much to spin-waiting on a busy machine; torch default otherwise)')
    run.add_argument('--no-progress', action='store_true', help='disable the progress bar')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------
def digits_datasets(img_size: int, val_fraction: float, seed: int) -> Tuple[Dataset, Dataset, int, int]:
    """scikit-learn digits as (1, img_size, img_size) float tensors, stratified train/val split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(img_size, img_size), mode='bilinear', align_corners=False)
    images = (images - DIGITS_MEAN) / DIGITS_STD
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=val_fraction,
                                          stratify=labels.numpy(), random_state=seed)
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    return (TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[val_idx], labels[val_idx]),
            10, 1)


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap augmentation for tensor datasets."""
    if max_shift <= 0:
        return images
    padded = F.pad(images, [max_shift] * 4)
    height, width = images.shape[-2:]
    out = torch.empty_like(images)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + height, dx:dx + width]
    return out


def folder_datasets(root: str, img_size: int) -> Tuple[Dataset, Dataset, int, int]:
    """ImageFolder ``root/train`` and ``root/val`` with timm's ImageNet transforms."""
    from timm.data import create_dataset, create_transform

    train = create_dataset('', root=root, split='train', is_training=True)
    val = create_dataset('', root=root, split='validation' if os.path.isdir(os.path.join(root, 'validation'))
                         else 'val')
    train.transform = create_transform(img_size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1')
    val.transform = create_transform(img_size, is_training=False, interpolation='bicubic', crop_pct=0.875)
    num_classes = len(getattr(train.reader, 'class_to_idx', {})) or 1000
    return train, val, num_classes, 3


# ---------------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------------------------------
def setup_distributed(device_arg: str) -> Tuple[torch.device, int, int]:
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() if not device_arg else device_arg.startswith('cuda')
    if use_cuda:
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
    if world_size > 1:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return device, rank, world_size


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_settings(amp: str, device: torch.device):
    """(enabled, dtype) for torch.autocast; mixed precision only where the device has fast low-precision math."""
    if amp == 'off' or (amp == 'auto' and device.type != 'cuda'):
        return False, None
    if device.type == 'cuda':
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return True, torch.bfloat16  # explicit --amp on for CPU


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp) -> Dict[str, float]:
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            logits = model(images)
        totals += torch.tensor([F.cross_entropy(logits.float(), labels, reduction='sum').item(),
                                (logits.argmax(1) == labels).sum().item(), labels.numel()], dtype=torch.float64)
    totals = all_reduce_sum(totals.to(device)).cpu()
    count = max(1.0, totals[2].item())
    return {'loss': totals[0].item() / count, 'acc': 100.0 * totals[1].item() / count}


def build_model(args, num_classes: int, in_chans: int, digits: bool) -> nn.Module:
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, pretrained=args.pretrained)
    depths = args.depths if args.depths is not None else ((1, 1, 2, 1) if digits else None)
    dims = args.dims if args.dims is not None else (32 if digits else None)
    drop_path = args.drop_path if args.drop_path is not None else (0.05 if digits else None)
    if depths is not None:
        kwargs['depths'] = tuple(depths)
    if dims is not None:
        kwargs['dims'] = dims
    if drop_path is not None:
        kwargs['drop_path_rate'] = drop_path
    return timm.create_model(args.model, **kwargs)


def save_checkpoint(path: str, model, optimizer, scheduler, scaler, ema, epoch: int, best_acc: float, args) -> None:
    state = {
        'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
        'scaler': scaler.state_dict(), 'epoch': epoch, 'best_acc': best_acc, 'args': vars(args),
    }
    if ema is not None:
        state['model_ema'] = ema.module.state_dict()
    tmp = path + '.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None) -> Dict[str, float]:
    """Train and return the final metrics (``val_acc``, ``val_acc_ema`` if --ema, ``best_acc``, ``train_loss``...)."""
    args = parse_args(argv)
    device, rank, world_size = setup_distributed(args.device)
    is_main = rank == 0
    digits = not args.data_dir
    threads = args.threads if args.threads is not None else (1 if digits else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed + rank)

    if digits:
        train_set, val_set, num_classes, in_chans = digits_datasets(args.img_size, args.val_fraction, args.seed)
    else:
        train_set, val_set, num_classes, in_chans = folder_datasets(args.data_dir, args.img_size)
    if args.train_limit:
        train_set = torch.utils.data.Subset(train_set, range(min(args.train_limit, len(train_set))))
    train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed) \
        if world_size > 1 else None
    # Validation shards without padding, so that the all-reduced accuracy counts every sample exactly once.
    val_subset = torch.utils.data.Subset(val_set, range(rank, len(val_set), world_size)) if world_size > 1 else val_set
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=train_sampler is None,
                              sampler=train_sampler, num_workers=args.workers, pin_memory=device.type == 'cuda',
                              drop_last=len(train_set) >= 2 * args.batch_size * world_size)
    val_loader = DataLoader(val_subset, batch_size=2 * args.batch_size, shuffle=False, num_workers=args.workers)

    model = build_model(args, num_classes, in_chans, digits).to(device)
    ema = ModelEmaV3(model, decay=args.ema_decay) if args.ema else None
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    decay, no_decay = [], []
    for name, param in unwrap(model).named_parameters():
        (no_decay if param.ndim <= 1 or name.endswith('.bias') else decay).append(param)
    optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': args.weight_decay},
                                   {'params': no_decay, 'weight_decay': 0.0}], lr=args.lr)
    steps_per_epoch = len(train_loader)
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total_steps, warmup_steps, args.min_lr / args.lr))
    amp = autocast_settings(args.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp[0] and amp[1] == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    start_epoch, best_acc = 0, 0.0
    if args.resume:
        checkpoint = torch.load(args.resume, map_location='cpu', weights_only=False)
        unwrap(model).load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint['scaler'])
        if ema is not None and 'model_ema' in checkpoint:
            ema.module.load_state_dict(checkpoint['model_ema'])
        start_epoch, best_acc = checkpoint['epoch'] + 1, checkpoint['best_acc']
        if is_main:
            print(f'resumed from {args.resume} at epoch {start_epoch}', flush=True)

    metrics_path = os.path.join(args.output, 'metrics.csv')
    if is_main:
        os.makedirs(args.output, exist_ok=True)
        n_params = sum(p.numel() for p in unwrap(model).parameters())
        print(f'{args.model}: {n_params / 1e6:.2f}M params, {len(train_set)} train / {len(val_set)} val samples, '
              f'{world_size} process(es) on {device.type}, amp={amp[1] if amp[0] else "off"}', flush=True)
    fields = ['epoch', 'lr', 'train_loss', 'val_loss', 'val_acc', 'val_acc_ema', 'epoch_time_s']
    final: Dict[str, float] = {}
    run_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        epoch_start = time.time()
        loss_sum, loss_count = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{args.epochs}', leave=False, mininterval=1.0,
                   disable=not is_main or args.no_progress or tqdm is None) if tqdm is not None else train_loader
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if digits:
                images = random_shift(images, max_shift=args.img_size // 16)
            with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(unwrap(model))
            loss_sum += loss.detach().double().cpu()
            loss_count += 1
            if tqdm is not None and hasattr(bar, 'set_postfix'):
                bar.set_postfix(loss=f'{loss.item():.3f}', lr=f'{scheduler.get_last_lr()[0]:.2e}')
        train_loss = (all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(loss_count), dtype=torch.float64)])
                                     .to(device)).cpu())
        train_loss = (train_loss[0] / train_loss[1]).item()
        val = evaluate(model, val_loader, device, amp)
        val_ema = evaluate(ema.module, val_loader, device, amp) if ema is not None else None
        epoch_acc = max(val['acc'], val_ema['acc']) if val_ema else val['acc']
        row = {'epoch': epoch + 1, 'lr': scheduler.get_last_lr()[0], 'train_loss': train_loss,
               'val_loss': val['loss'], 'val_acc': val['acc'], 'val_acc_ema': val_ema['acc'] if val_ema else '',
               'epoch_time_s': time.time() - epoch_start}
        if is_main:
            new_file = not os.path.exists(metrics_path) or (epoch == 0 and not args.resume)
            with open(metrics_path, 'w' if new_file else 'a', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                if new_file:
                    writer.writeheader()
                writer.writerow(row)
            ema_text = f', val acc (EMA) {val_ema["acc"]:.2f}%' if val_ema else ''
            print(f'epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f}, val loss {val["loss"]:.4f}, '
                  f'val acc {val["acc"]:.2f}%{ema_text} ({row["epoch_time_s"]:.1f}s)', flush=True)
            if epoch_acc > best_acc:
                best_acc = epoch_acc
                save_checkpoint(os.path.join(args.output, 'best.pth'), model, optimizer, scheduler, scaler, ema,
                                epoch, best_acc, args)
            save_checkpoint(os.path.join(args.output, 'last.pth'), model, optimizer, scheduler, scaler, ema, epoch,
                            best_acc, args)
        final = {'epoch': epoch + 1, 'train_loss': train_loss, 'val_loss': val['loss'], 'val_acc': val['acc'],
                 'best_acc': max(best_acc, epoch_acc)}
        if val_ema:
            final['val_acc_ema'] = val_ema['acc']
    if is_main and final:
        print(f'validation accuracy: {final["val_acc"]:.2f}% (best {final["best_acc"]:.2f}%), '
              f'{time.time() - run_start:.0f}s', flush=True)
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final


if __name__ == '__main__':
    main()
