"""Model-zoo metadata in OpenMMLab's format (model-index.yml, configs/metafile-*.yml), and the README's
configs table made from it.

    python dev/model_zoo.py metafiles --measure [NAME ...]  # build the models, count params and FLOPs, write
    python dev/model_zoo.py metafiles [--check]             # write (or check) keeping the numbers already measured
    python dev/model_zoo.py readme [--check]                # write (or check) the README's configs table

What each entry says comes from its config (family, config path, backbone checkpoint, data, schedule,
batch); parameters and FLOPs from building its model (FLOPs as mmengine's FlopAnalyzer counts them, one
multiply-add = 1, at the input size of the family); published metrics from the paper (``PAPER`` below,
marked as the paper's). We publish no trained weights, so no entry has ``Weights``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from convnextv2_dense.models.archs import ARCHS  # noqa: E402

CONFIGS = REPO / 'configs'
MODEL_INDEX = REPO / 'model-index.yml'
README = REPO / 'README.md'
TABLE_BEGIN = '<!-- configs table: written by `python dev/model_zoo.py readme` from the metafiles; edit those -->'
TABLE_END = '<!-- end of the configs table -->'
PAPER_TITLE = 'ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders'
PAPER_URL = 'https://arxiv.org/abs/2301.00808'
# Published results (Woo et al., 2023, COCO and ADE20K tables; ImageNet-1K FCMAE models): keyed by the config
# whose recipe and start are the paper's. Not reproduced here.
PAPER = {
    'upernet_convnextv2_base_ade20k': {'mIoU(ms+flip)': 52.1},
    'upernet_convnextv2_large_ade20k': {'mIoU(ms+flip)': 53.7},
    'upernet_convnextv2_huge_ade20k': {'mIoU(ms+flip)': 55.0},
    'mask-rcnn_convnextv2_base_fpn_3x_coco': {'box AP': 52.9, 'mask AP': 46.6},
    'mask-rcnn_convnextv2_large_fpn_3x_coco': {'box AP': 54.4, 'mask AP': 47.7},
    'mask-rcnn_convnextv2_huge_fpn_3x_coco': {'box AP': 55.7, 'mask AP': 48.9},
}
RESULTS_SOURCE = 'the paper (Woo et al., 2023), not reproduced here; this project publishes no weights'
TASK_OF_METRIC = {'mIoU(ms+flip)': 'Semantic Segmentation', 'box AP': 'Object Detection',
                  'mask AP': 'Instance Segmentation'}
STARTS = {  # official release folders (facebookresearch/ConvNeXt-V2 README)
    '/pt_only/': 'ImageNet-1K FCMAE pre-training',
    '/im1k/': 'ImageNet-1K FCMAE pre-training, then supervised ImageNet-1K fine-tuning',
}


@dataclass(frozen=True)
class Family:
    """A collection: one head on one dataset.

    Args:
        collection (str): Collection name.
        metafile (str): Its metafile, relative to the repo root.
        dataset (str): Training and test data.
        architecture (tuple[str, ...]): Collection ``Architecture``.
        flops_input (tuple[int, int]): (width, height) of the image FLOPs are counted at.
        flops_counted (str): What the ``mode='tensor'`` forward that is counted runs.
    """

    collection: str
    metafile: str
    dataset: str
    architecture: tuple[str, ...]
    flops_input: tuple[int, int]
    flops_counted: str


UPERNET = Family('UperNet + ConvNeXt V2', 'configs/metafile-upernet.yml', 'ADE20K',
                 ('ConvNeXt V2', 'UPerNet', 'FCN auxiliary head'), (512, 512),
                 'backbone and decode head (no auxiliary head), one 512x512 image')
MASK_RCNN = Family('Mask R-CNN + ConvNeXt V2', 'configs/metafile-mask-rcnn.yml', 'COCO',
                   ('ConvNeXt V2', 'FPN', 'RPN', 'Mask R-CNN', 'RoIAlign'), (1280, 800),
                   'backbone, FPN, RPN, box head on the RPN proposals (up to 1000), mask head on the first 100; '
                   'one 1280x800 image')
CASCADE = Family('Cascade Mask R-CNN + ConvNeXt V2', 'configs/metafile-cascade-mask-rcnn.yml', 'COCO',
                 ('ConvNeXt V2', 'FPN', 'RPN', 'Cascade R-CNN', 'RoIAlign'), (1280, 800),
                 'backbone, FPN, RPN, three box heads and three mask heads on all RPN proposals (up to 1000; '
                 "mmdet 3's Cascade forward, where published Cascade figures run masks on 100); one 1280x800 image")
FAMILIES = (UPERNET, MASK_RCNN, CASCADE)


# ----------------------------------------------------------------------------------- reading configs
def released_configs() -> list[Path]:
    """The leaf configs for real data (configs/*.py; the CPU demos are not model-zoo entries)."""
    return sorted(CONFIGS.glob('*.py'))


@functools.cache
def load(path: Path) -> Any:
    from mmengine.config import Config
    return Config.fromfile(str(path))


def family_of(cfg: Any, path: Path) -> Family:
    """The family a config belongs to, read from its scope and model."""
    if cfg.default_scope == 'mmseg' and cfg.model.decode_head.type in ('UPerHead', 'UPerHeadFast'):
        return UPERNET
    if cfg.default_scope == 'mmdet' and cfg.model.type in ('MaskRCNN', 'MaskRCNNFast'):
        return MASK_RCNN
    if cfg.default_scope == 'mmdet' and cfg.model.type == 'CascadeRCNN':
        return CASCADE
    raise ValueError(f'{path.name}: no model-zoo family for default_scope={cfg.default_scope!r}, '
                     f'model type {cfg.model.type!r}; add one to FAMILIES in {Path(__file__).name}')


def start_of(url: str) -> str:
    """What the backbone checkpoint at ``url`` is."""
    for folder, kind in STARTS.items():
        if folder in url:
            return kind
    return 'see the URL'


def schedule_of(cfg: Any) -> dict:
    loop = cfg.train_cfg
    return {'Epochs': loop.max_epochs} if 'max_epochs' in loop else {'Iterations': loop.max_iters}


def model_key(cfg: Any) -> str:
    """Configs with equal keys build the same network (the backbone checkpoint and compile aside)."""
    model = copy.deepcopy(cfg.model.to_dict())
    for key in ('init_cfg', 'compile', 'drop_path_rate'):
        model['backbone'].pop(key, None)
    return json.dumps(model, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------- measuring
def build(cfg: Any, device: str = 'cpu') -> Any:
    """The model of ``cfg``, eager, untrained (seed 0), in eval mode, with BN in place of SyncBN."""
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    import convnextv2_dense  # noqa: F401  (registers the backbone and the constructor)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.update(init_cfg=None, compile=False)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    with torch.device(device):
        model = MODELS.build(model_cfg)
    return revert_sync_batchnorm(model).eval()


def count_parameters(cfg: Any) -> int:
    """Parameters of the built model (on the meta device: exact counts without memory)."""
    return sum(p.numel() for p in build(cfg, device='meta').parameters())


def count_flops(cfg: Any, family: Family) -> int:
    """FLOPs of one ``mode='tensor'`` forward at ``family.flops_input``, as mmseg's and mmdet's get_flops tools
    count it: UperNet's backbone and decode head; Mask R-CNN's backbone, FPN, RPN with its proposals, and RoI
    heads (up to 1000 boxes, masks for the first 100). mmengine's FlopAnalyzer, one multiply-add = 1."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    width, height = family.flops_input
    model = build(cfg)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    if cfg.default_scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.structures import DetDataSample as Sample
    samples = [Sample(metainfo=meta)]
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    model.forward = functools.partial(model.forward, data_samples=samples, mode='tensor')
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, image)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())


# ------------------------------------------------------------------------------------- metafiles
def entry(path: Path, measured: dict) -> dict:
    """The metafile ``Models`` entry of one config (``measured``: Parameters and FLOPs)."""
    cfg = load(path)
    family = family_of(cfg, path)
    arch = cfg.model.backbone.arch
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    width, height = family.flops_input
    metadata = {
        'Training Data': family.dataset,
        'Backbone': f'ConvNeXt V2-{arch.capitalize()}',
        'Pretrained': checkpoint,
        'Pretraining': start_of(checkpoint),
        **schedule_of(cfg),
        'Batch Size': cfg.auto_scale_lr.base_batch_size,
        'Parameters': measured['Parameters'],
        'FLOPs': measured['FLOPs'],
        'FLOPs Input': f'{width}x{height}',
    }
    item = {'Name': path.stem, 'In Collection': family.collection, 'Config': str(path.relative_to(REPO)),
            'Metadata': metadata}
    published = PAPER.get(path.stem)
    if published:
        tasks: dict[str, dict] = {}
        for metric, value in published.items():
            tasks.setdefault(TASK_OF_METRIC[metric], {})[metric] = value
        item['Results'] = [{'Task': task, 'Dataset': family.dataset, 'Metrics': metrics}
                           for task, metrics in tasks.items()]
        item['Results Source'] = RESULTS_SOURCE
    return item


def order(path: Path) -> tuple:
    """By arch, then the longer schedule first, then the paper's start (FCMAE pre-training) first."""
    cfg = load(path)
    fcmae_first = '/pt_only/' not in cfg.model.backbone.init_cfg.checkpoint
    return (list(ARCHS).index(cfg.model.backbone.arch), -schedule_of(cfg).get('Epochs', 0), fcmae_first, path.name)


def collection(family: Family) -> dict:
    return {'Name': family.collection,
            'Metadata': {'Training Data': family.dataset,
                         'Training Techniques': ['AdamW', 'Layer-wise lr decay', 'Mixed precision'],
                         'Architecture': list(family.architecture),
                         'FLOPs Counted': family.flops_counted},
            'Paper': {'Title': PAPER_TITLE, 'URL': PAPER_URL},
            'README': 'README.md'}


def read_measured() -> dict[str, dict]:
    """Parameters and FLOPs by model name, from the metafiles as they are."""
    measured = {}
    for family in FAMILIES:
        path = REPO / family.metafile
        if path.is_file():
            for model in yaml.safe_load(path.read_text()).get('Models', []):
                measured[model['Name']] = {k: model['Metadata'][k] for k in ('Parameters', 'FLOPs')}
    return measured


def measure(chosen: list[Path], log: bool = True) -> dict[str, dict]:
    """Measure each distinct network among ``chosen`` once; the result holds every released config that
    builds one of them (a 3x leaf and its 1x sibling build the same network)."""
    done: dict[str, dict] = {}
    for path in chosen:
        cfg = load(path)
        key = model_key(cfg)
        if key not in done:
            family = family_of(cfg, path)
            done[key] = {'Parameters': count_parameters(cfg), 'FLOPs': count_flops(cfg, family)}
            if log:
                print(f'{path.stem}: {done[key]["Parameters"] / 1e6:.1f}M parameters, '
                      f'{done[key]["FLOPs"] / 1e9:.1f} GFLOPs at {family.flops_input}', flush=True)
    return {p.stem: done[model_key(load(p))] for p in released_configs() if model_key(load(p)) in done}


def metafile_texts(measured: dict[str, dict]) -> dict[Path, str]:
    """The text of every metafile and of model-index.yml."""
    by_family: dict[Family, list[Path]] = {family: [] for family in FAMILIES}
    for path in released_configs():
        by_family[family_of(load(path), path)].append(path)
    texts = {}
    header = ('# Written by dev/model_zoo.py from the configs; do not edit. Results are the paper\'s where it '
              'published one\n# (see "Results Source"); Parameters and FLOPs were measured by building the model.\n')
    for family, paths in by_family.items():
        missing = [p.stem for p in paths if p.stem not in measured]
        if missing:
            raise SystemExit(f'no measured Parameters/FLOPs for {", ".join(missing)}: run '
                             f'`python dev/model_zoo.py metafiles --measure {" ".join(missing)}`')
        doc = {'Collections': [collection(family)],
               'Models': [entry(p, measured[p.stem]) for p in sorted(paths, key=order)]}
        texts[REPO / family.metafile] = header + dump(doc)
    texts[MODEL_INDEX] = dump({'Import': [f.metafile for f in FAMILIES]})
    return texts


def dump(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


# -------------------------------------------------------------------------------------- README
def readme_table() -> str:
    """The README's configs section body, from the metafiles."""
    lines = [TABLE_BEGIN]
    for family in FAMILIES:
        doc = yaml.safe_load((REPO / family.metafile).read_text())
        models = doc['Models']
        width_height = models[0]['Metadata']['FLOPs Input']
        metrics = list(dict.fromkeys(m for model in models for r in model.get('Results', []) for m in r['Metrics']))
        lines += ['', f'**{family.collection}**, {family.dataset}:', '',
                  f'| config | schedule | backbone starts from | params | FLOPs ({width_height}) | '
                  f'{" / ".join(metrics) or "result"}, published |',
                  '|---|---|---|---|---|---|']
        for model in models:
            meta = model['Metadata']
            schedule = (f'{meta["Epochs"]} epochs' if 'Epochs' in meta else f'{meta["Iterations"] // 1000}k iterations')
            start = meta['Pretrained'].rsplit('/', 1)[-1]
            published = ' / '.join(str(v) for r in model.get('Results', []) for v in r['Metrics'].values())
            lines.append(f'| [{model["Name"]}]({model["Config"]}) | {schedule}, batch {meta["Batch Size"]} | '
                         f'[`{start}`]({meta["Pretrained"]}) | {meta["Parameters"] / 1e6:.1f}M | '
                         f'{meta["FLOPs"] / 1e9:.0f}G | {published + " (paper)" if published else "-"} |')
    lines += ['', TABLE_END]
    return '\n'.join(lines)


def readme_with_table(text: str, table: str) -> str:
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise SystemExit(f'{README.name} must hold the configs table markers once each:\n{TABLE_BEGIN}\n{TABLE_END}')
    head, rest = text.split(TABLE_BEGIN)
    return head + table + rest.split(TABLE_END, 1)[1]


# ---------------------------------------------------------------------------------------- CLI
def write_or_check(texts: dict[Path, str], check: bool) -> int:
    stale = [path for path, text in texts.items() if not path.is_file() or path.read_text() != text]
    if check:
        for path in stale:
            print(f'{path.relative_to(REPO)} is out of date: run `python dev/model_zoo.py '
                  f'{"readme" if path == README else "metafiles"}`')
        return 1 if stale else 0
    for path in stale:
        path.write_text(texts[path])
        print(f'wrote {path.relative_to(REPO)}')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Model-zoo metafiles and the README configs table')
    sub = parser.add_subparsers(dest='command', required=True)
    meta = sub.add_parser('metafiles', help='write configs/metafile-*.yml and model-index.yml')
    meta.add_argument('--measure', nargs='*', metavar='NAME',
                      help='build and measure these configs (by file stem; none named: all)')
    meta.add_argument('--check', action='store_true', help='only check that the files are up to date')
    readme = sub.add_parser('readme', help="write the README's configs table from the metafiles")
    readme.add_argument('--check', action='store_true', help='only check that the table is up to date')
    args = parser.parse_args(argv)

    if args.command == 'readme':
        return write_or_check({README: readme_with_table(README.read_text(), readme_table())}, args.check)
    measured = read_measured()
    if args.measure is not None:
        paths = released_configs()
        unknown = set(args.measure) - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f'unknown config names: {", ".join(sorted(unknown))}')
        chosen = [p for p in paths if not args.measure or p.stem in args.measure]
        measured.update(measure(chosen))
    return write_or_check(metafile_texts(measured), args.check)


if __name__ == '__main__':
    sys.exit(main())
