#!/usr/bin/env python3
"""Parameters, FLOPs and MACs of any timm or vmamba_zoo model.

    python tools/flops.py --model vmamba_tiny_s1l8
    python tools/flops.py --model convnext_tiny --img-size 256 256 --json

Counts with fvcore (one fused multiply-add = one flop: the "FLOPs" papers quote) and ``torch.utils.flop_counter``
(two flops per multiply-add), the selective scan counted as 9·B·L·D·N + B·D·L by both; the output states the
convention. The counting itself lives in ``vmamba_zoo.utils.flops.measure_flops``.
"""
import argparse
import json
import sys

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', '-m', required=True, help='timm model name (zoo models are registered on import)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help="input height and width (default: the model's pretrained cfg input size)")
    parser.add_argument('--batch-size', type=int, default=1, help='batch of the counted forward (default: 1)')
    parser.add_argument('--device', default='cpu', help="device of the counted forward, e.g. 'cpu' or 'cuda'")
    parser.add_argument('--counters', nargs='+', default=['fvcore', 'flop_counter'],
                        choices=['fvcore', 'flop_counter'], help='which counters to run (default: both)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import vmamba_zoo  # noqa: F401  (registers the zoo's models with timm)
    from vmamba_zoo.utils.flops import format_report, measure_flops

    report = measure_flops(args.model, img_size=args.img_size, batch_size=args.batch_size,
                           device=torch.device(args.device), counters=args.counters)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write('\n')
    else:
        print(format_report(report))


if __name__ == '__main__':
    main()
