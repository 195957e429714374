"""The model-card index: ``model_cards/index.json`` (cached measurements) and ``model_cards/README.md`` (the table).

Every zoo model registered with timm gets one row: parameters and GFLOPs measured by ``vmamba_zoo.utils.flops``
(fvcore, batch 1, the model's default input size), the published ImageNet top-1 and its source (from the YAML front
matter of ``model_cards/<name>.md``), and the official weight URL and licence (from the default pretrained cfg).

Card front matter read for the accuracy (Hugging Face ``model-index`` layout)::

    model-index:
    - name: vmamba_tiny_s1l8
      results:
      - task: {type: image-classification}
        dataset: {name: ImageNet-1k, type: imagenet-1k, split: validation}
        metrics:
        - {type: accuracy, name: Top-1, value: 82.6}
        source: {name: VMamba paper / README, url: https://github.com/MzeroMiko/VMamba}

(a flat ``top1: 82.6`` with ``top1_source: ...`` is accepted as well; without either, the first markdown table of the
body with a "top-1" column is read, with its "source" column).
"""
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    'INDEX_VERSION', 'read_card', 'read_card_front_matter', 'card_top1', 'model_metadata', 'measure_entry',
    'build_index', 'render_readme', 'check_index', 'default_paths',
]

INDEX_VERSION = 1
CHECK_SIZE = (64, 64)  # input size of the quick re-measurement in ``check_index``
REGENERATE = 'python tools/gen_model_card_index.py'


def default_paths() -> Tuple[Path, Path, Path]:
    """(cards folder, index JSON, README) of this checkout."""
    cards = Path(__file__).resolve().parents[2] / 'model_cards'
    return cards, cards / 'index.json', cards / 'README.md'


def read_card(path: Path) -> Tuple[Dict[str, Any], str]:
    """(YAML front matter as a dict, markdown body) of a card; ({}, '') if the file is missing."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}, ''
    text = path.read_text(encoding='utf-8')
    match = re.match(r'^---\s*\n(.*?)\n---\s*(\n|$)', text, re.S)
    if not match:
        return {}, text
    data = yaml.safe_load(match.group(1))
    return (data if isinstance(data, dict) else {}), text[match.end():]


def read_card_front_matter(path: Path) -> Dict[str, Any]:
    """The YAML front matter of a markdown card as a dict ({} if the file or the front matter is missing)."""
    return read_card(path)[0]


def _table_top1(body: str) -> Tuple[Optional[float], Optional[str]]:
    """First value under a 'top-1' column of a markdown table in the card body, with that row's 'source' cell."""
    lines = body.splitlines()
    for index, line in enumerate(lines[:-2]):
        if not line.lstrip().startswith('|') or not re.match(r'^\s*\|[\s:|-]+\|\s*$', lines[index + 1]):
            continue
        header = [cell.strip().lower() for cell in line.strip().strip('|').split('|')]
        column = next((i for i, cell in enumerate(header) if re.search(r'top-?1\b', cell)), None)
        if column is None:
            continue
        source_column = next((i for i, cell in enumerate(header) if 'source' in cell), None)
        for row in lines[index + 2:]:
            if not row.lstrip().startswith('|'):
                break
            cells = [cell.strip() for cell in row.strip().strip('|').split('|')]
            number = re.search(r'\d+(\.\d+)?', cells[column]) if column < len(cells) else None
            if number:
                source = cells[source_column] if source_column is not None and source_column < len(cells) else None
                return float(number.group(0)), source
    return None, None


def _is_top1(metric: Dict[str, Any]) -> bool:
    label = f"{metric.get('type', '')} {metric.get('name', '')}".lower().replace('-', '').replace('_', '')
    return 'top1' in label or (label.strip().startswith('accuracy') and 'top5' not in label)


def card_top1(front: Dict[str, Any], body: str = '') -> Tuple[Optional[float], Optional[str]]:
    """Published ImageNet top-1 (%) and its source: from the front matter (``top1:`` or ``model-index``), else from
    the first markdown table of the body with a 'top-1' column; (None, None) if absent."""
    for key in ('top1', 'imagenet_top1', 'top1_accuracy'):
        if front.get(key) is not None:
            return float(front[key]), front.get('top1_source')
    for entry in front.get('model-index') or []:
        for result in (entry or {}).get('results') or []:
            for metric in result.get('metrics') or []:
                if isinstance(metric, dict) and metric.get('value') is not None and _is_top1(metric):
                    source = metric.get('source') or result.get('source')
                    if isinstance(source, dict):
                        source = ' '.join(str(v) for v in (source.get('name'), source.get('url')) if v)
                    return float(metric['value']), source
    return _table_top1(body)


def _weight_url(cfg) -> Optional[str]:
    if cfg is None:
        return None
    if getattr(cfg, 'url', None):
        return cfg.url
    if getattr(cfg, 'hf_hub_id', None):
        return f'https://huggingface.co/{cfg.hf_hub_id}'
    return None


def model_metadata(name: str, cards_dir: Path) -> Dict[str, Any]:
    """Cheap, non-measured fields of a row: default input size, tags, weight URL, licence, top-1, card path."""
    import timm

    from .registry import default_input_size

    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    tags = sorted(timm.models.get_arch_pretrained_cfgs(name))
    card = Path(cards_dir) / f'{name}.md'
    front, body = read_card(card)
    top1, top1_source = card_top1(front, body)
    return dict(
        module=timm.models.model_entrypoint(name).__module__,
        input_size=list(default_input_size(name)),
        pretrained_tags=tags,
        weight_url=_weight_url(cfg) or front.get('weight_url'),
        license=(getattr(cfg, 'license', None) if cfg is not None else None) or front.get('license'),
        top1=top1, top1_source=top1_source,
        card=card.name if card.is_file() else None,
    )


def measure_entry(name: str) -> Dict[str, Any]:
    """Measured fields of a row: params and fvcore GFLOPs/GMACs at the default input size, batch 1, CPU; and the
    GFLOPs at the small ``CHECK_SIZE`` that the staleness check can recompute in seconds (None if the model cannot
    run at that size)."""
    from .flops import measure_flops

    report = measure_flops(name, counters=('fvcore',))
    try:
        check_g = round(measure_flops(name, img_size=CHECK_SIZE, counters=('fvcore',))['fvcore_g'], 6)
    except Exception:  # noqa: BLE001 - e.g. a model that needs larger inputs
        check_g = None
    return dict(params=report['params'], params_m=round(report['params'] / 1e6, 3),
                fvcore_g=round(report['fvcore_g'], 4), gmacs=round(report['gmacs'], 4),
                fvcore_scan_g=round(report['fvcore_scan'] / 1e9, 4),
                fvcore_unsupported=report['fvcore_unsupported'], check_fvcore_g=check_g)


def build_index(names: List[str], cards_dir: Path, cached: Optional[Dict[str, Any]] = None,
                recompute: bool = False, log=None) -> Dict[str, Any]:
    """Index of ``names``: metadata read fresh, measurements reused from ``cached`` when the model's parameter count
    and input size are unchanged (``recompute`` measures everything again). A name that builds another registered
    architecture (an alias kept for an official name) is listed under ``aliases`` instead of measured again."""
    from .flops import CONVENTION
    from .registry import describe_models

    cached_models = (cached or {}).get('models', {})
    info = describe_models(names)
    aliases = _aliases(names, info)
    models = {}
    for name in names:
        if name in aliases:
            continue
        entry = model_metadata(name, cards_dir)
        previous = cached_models.get(name)
        reuse = (not recompute and previous is not None and previous.get('input_size') == entry['input_size']
                 and all(key in previous for key in _MEASURED) and previous.get('params') == info[name]['params'])
        if log is not None:
            log(f"{name}: {'cached' if reuse else 'measuring'}")
        measured = {k: previous[k] for k in _MEASURED} if reuse else measure_entry(name)
        models[name] = dict(entry, **measured)
    return dict(version=INDEX_VERSION,
                method='vmamba_zoo.utils.flops.measure_flops(name, counters=("fvcore",)): batch 1, CPU, random '
                       'weights, default input size of the pretrained cfg',
                convention=CONVENTION, models=models, aliases=aliases)


def _aliases(names: List[str], info: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """``{alias: target}`` for names whose model is another registered name's architecture."""
    return {name: info[name]['architecture'] for name in names
            if info[name].get('architecture') not in (None, name) and info[name]['architecture'] in names}


_MEASURED = ('params', 'params_m', 'fvcore_g', 'gmacs', 'fvcore_scan_g', 'fvcore_unsupported', 'check_fvcore_g')


def _cell(value, fmt='{}') -> str:
    return '—' if value is None else fmt.format(value)


def render_readme(index: Dict[str, Any]) -> str:
    """Markdown of ``model_cards/README.md`` for an index (deterministic: the check compares it verbatim)."""
    lines = [
        '# Model cards',
        '',
        f'Generated by `{REGENERATE}` from `index.json`; do not edit by hand.',
        '',
        'Params and GFLOPs are measured by `vmamba_zoo.utils.flops` (fvcore, batch 1, the default input size, one '
        'fused multiply-add = one FLOP as in the papers; the selective scan counted as 9·B·L·D·N + B·D·L). Top-1 '
        "is the published ImageNet-1k figure from each card's front matter; weights are the official checkpoints.",
        '',
        '| Model | Params (M) | GFLOPs | Input | ImageNet top-1 (%) | Weights | Licence | Card |',
        '|---|---:|---:|---|---:|---|---|---|',
    ]
    models = index.get('models', {})
    for name in sorted(models, key=lambda n: (models[n].get('module', ''), n)):
        entry = models[name]
        _, height, width = entry['input_size']
        weights = f"[download]({entry['weight_url']})" if entry.get('weight_url') else '—'
        card = f"[{entry['card']}]({entry['card']})" if entry.get('card') else '—'
        lines.append(f"| `{name}` | {_cell(entry.get('params_m'), '{:.1f}')} | "
                     f"{_cell(entry.get('fvcore_g'), '{:.2f}')} | {height}×{width} | "
                     f"{_cell(entry.get('top1'), '{:.1f}')} | {weights} | {_cell(entry.get('license'))} | {card} |")
    if not models:
        lines.append('| (no zoo model registered yet) | | | | | | | |')
    aliases = index.get('aliases') or {}
    if aliases:
        lines += ['', 'Aliases (same model under the official name): ' + ', '.join(
            f'`{alias}` = `{target}`' for alias, target in sorted(aliases.items())) + '.']
    lines.append('')
    return '\n'.join(lines)


def check_index(index_path: Path, readme_path: Path, cards_dir: Path, recompute_sample: int = 1,
                names: Optional[List[str]] = None) -> List[str]:
    """Problems that make the committed index stale (empty list = current).

    Fast: compares the registered model list, parameter counts (built on the meta device), metadata and the README
    text; re-measures FLOPs only for the ``recompute_sample`` cheapest cached models, at ``CHECK_SIZE``.

    Args:
        index_path: the index JSON.
        readme_path: the README generated from it.
        cards_dir: folder of the model cards.
        recompute_sample: how many models (cheapest first) to measure again.
        names: the models that should be indexed; default: every registered zoo model.
    """
    from .flops import measure_flops
    from .registry import describe_models, list_zoo_models

    index_path, readme_path = Path(index_path), Path(readme_path)
    if not index_path.is_file():
        return [f'{index_path} is missing: run {REGENERATE}']
    index = json.loads(index_path.read_text(encoding='utf-8'))
    problems = []
    if index.get('version') != INDEX_VERSION:
        problems.append(f"index version {index.get('version')} != {INDEX_VERSION}")
    cached = index.get('models', {})
    registered = list_zoo_models() if names is None else list(names)
    info = describe_models(registered)
    aliases = _aliases(registered, info)
    if (index.get('aliases') or {}) != aliases:
        problems.append(f"aliases {index.get('aliases')} in the index, {aliases} now")
    registered = [name for name in registered if name not in aliases]
    for name in sorted(set(registered) - set(cached)):
        problems.append(f'{name} is registered but missing from the index')
    for name in sorted(set(cached) - set(registered)):
        problems.append(f'{name} is in the index but no longer registered')
    for name in sorted(set(registered) & set(cached)):
        entry = cached[name]
        fresh = model_metadata(name, cards_dir)
        for key, value in fresh.items():
            if entry.get(key) != value:
                problems.append(f'{name}: {key} is {entry.get(key)!r} in the index, {value!r} now')
        params = info[name]['params']
        if entry.get('params') != params:
            problems.append(f"{name}: params {entry.get('params')} in the index, {params} now")
    sample = sorted((n for n in set(registered) & set(cached) if cached[n].get('check_fvcore_g') is not None),
                    key=lambda n: cached[n]['check_fvcore_g'])[:recompute_sample]
    for name in sample:
        measured = round(measure_flops(name, img_size=CHECK_SIZE, counters=('fvcore',))['fvcore_g'], 6)
        if abs(measured - cached[name]['check_fvcore_g']) > 1e-6 + 1e-6 * measured:
            problems.append(f"{name}: GFLOPs at {CHECK_SIZE[0]}x{CHECK_SIZE[1]} {cached[name]['check_fvcore_g']} in "
                            f'the index, {measured} now')
    expected = render_readme(index)
    if not readme_path.is_file() or readme_path.read_text(encoding='utf-8') != expected:
        problems.append(f'{readme_path} does not match index.json')
    if problems:
        problems.append(f'regenerate with: {REGENERATE}')
    return problems
