#!/usr/bin/env python3
"""Regenerate ``model_cards/index.json`` and ``model_cards/README.md``: one row per registered zoo model.

    python tools/gen_model_card_index.py            # update (re-measures only new or changed models)
    python tools/gen_model_card_index.py --check    # exit 1 if the committed index is stale
    python tools/gen_model_card_index.py --recompute

Params and GFLOPs are measured with ``vmamba_zoo.utils.flops`` (fvcore, batch 1, CPU, default input size) and cached
in ``index.json``; accuracy comes from each card's front matter and weight URLs from the pretrained cfgs (see
``vmamba_zoo.utils.model_index``).
"""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    from vmamba_zoo.utils import model_index
    from vmamba_zoo.utils.registry import list_zoo_models

    cards_default, index_default, readme_default = model_index.default_paths()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cards-dir', default=str(cards_default), help='folder of the model cards')
    parser.add_argument('--check', action='store_true', help='only check that the committed index is current')
    parser.add_argument('--recompute', action='store_true', help='measure every model again, ignoring the cache')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    cards_dir = Path(args.cards_dir)
    index_path, readme_path = cards_dir / index_default.name, cards_dir / readme_default.name

    if args.check:
        problems = model_index.check_index(index_path, readme_path, cards_dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        print('model-card index is current' if not problems else 'model-card index is STALE')
        return 1 if problems else 0

    cached = json.loads(index_path.read_text(encoding='utf-8')) if index_path.is_file() else None
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    index = model_index.build_index(list_zoo_models(), cards_dir, cached, recompute=args.recompute, log=log)
    cards_dir.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + '\n', encoding='utf-8')
    readme_path.write_text(model_index.render_readme(index), encoding='utf-8')
    print(f"{len(index['models'])} models -> {index_path}, {readme_path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
