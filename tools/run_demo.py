"""The embedded default behind ``make demo``: train and evaluate on the synthetic data, on the CPU.

``python tools/run_demo.py seg --work-dir work_dirs/demo/upernet`` (or ``det``):

1. writes the synthetic dataset if it is not there (``tools/make_demo_data.py``);
2. evaluates the untrained model (same seed) for a baseline;
3. trains with ``tools/train.py`` (resuming an interrupted run);
4. evaluates the best checkpoint with ``tools/test.py --show-dir --out`` (and, for detection, checks the
   written COCO results with ``tools/coco_eval.py``);
5. plots the loss and metric curves, tiles a few predictions next to their ground truth into
   ``predictions.png``, and writes ``summary.md`` / ``summary.json``.

Every step is skipped when its result is already there, so a second run only prints the summary.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

DEMO_DATA = 'data/demo'  # where the demo configs read their data_root from
TASKS = {
    'seg': dict(config='configs/demo/upernet_convnextv2_atto_demo.py', metric='mIoU',
                report=('mIoU', 'mAcc', 'aAcc')),
    'det': dict(config='configs/demo/mask-rcnn_convnextv2_atto_demo.py', metric='coco/segm_mAP',
                report=('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')),
}


STEP_SECONDS: dict[str, float] = {}  # wall time of each step this run, for the summary


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Add the wall time of the block to :data:`STEP_SECONDS` under ``step``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STEP_SECONDS[step] = STEP_SECONDS.get(step, 0.0) + time.perf_counter() - start


def run(*args: str, step: str | None = None) -> None:
    """Run one of our tools as a user would, streaming its output; stop the demo if it fails."""
    cmd = [sys.executable, *args]
    print('\n$ ' + ' '.join(cmd), flush=True)
    with timed(step or osp.basename(args[0])):
        result = subprocess.run(cmd, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f'demo step failed with exit code {result.returncode}: {" ".join(args)}')


def last_metrics(work_dir: str) -> dict:
    """The metrics line that ``tools/test.py`` logged last under ``work_dir``."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime)
    if not logs:
        raise SystemExit(f'no test log found under {work_dir}')
    with open(logs[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def newest_best(train_dir: str) -> str | None:
    """The newest ``best_*.pth`` that mmengine's CheckpointHook left in ``train_dir``, if any."""
    best = sorted(glob.glob(osp.join(train_dir, 'best_*.pth')), key=osp.getmtime)
    return best[-1] if best else None


def config_digest(config: str) -> str:
    return hashlib.sha256(open(osp.join(REPO_ROOT, config), 'rb').read()).hexdigest()[:12]


def save_untrained(config: str, path: str, options: dict) -> None:
    """The model as training starts (seeded as the config says), saved for the baseline evaluation."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import convnextv2_dense  # noqa: F401
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    cfg.merge_from_dict(options)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(cfg.get('randomness', {}).get('seed', 0))
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {'note': 'untrained demo baseline'}}, path)


def tile_predictions(vis_dir: str, out_file: str, count: int = 6) -> str | None:
    """Stack the first ``count`` ground-truth | prediction images, at twice their size, into one PNG."""
    from PIL import Image
    files = sorted(glob.glob(osp.join(vis_dir, '**', '*.png'), recursive=True)
                   + glob.glob(osp.join(vis_dir, '**', '*.jpg'), recursive=True))[:count]
    if not files:
        return None
    images = [Image.open(f).convert('RGB') for f in files]
    images = [im.resize((im.width * 2, im.height * 2), Image.NEAREST) for im in images]  # small demo images
    width = max(im.width for im in images)
    sheet = Image.new('RGB', (width, sum(im.height for im in images)), 'white')
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    sheet.save(out_file)
    return out_file


DEMO_IMAGES = {'seg': 'ade/ADEChallengeData2016/images/validation/*.jpg', 'det': 'coco/val2017/*.jpg'}


def demo_images(task: str, count: int = 3) -> list[str]:
    """The first ``count`` validation images of the task's demo dataset."""
    return sorted(glob.glob(osp.join(REPO_ROOT, DEMO_DATA, DEMO_IMAGES[task])))[:count]


def infer_and_features(config: str, checkpoint: str, images: list[str], work_dir: str) -> list[str]:
    """Run ``tools/infer.py`` on ``images``, and its backbone mode on the first; return summary lines.
    The backbone's feature maps (first three principal components as RGB) are tiled next to the image
    into ``features.png``.
    """
    from PIL import Image

    from convnextv2_dense.inference.infer_cli import main as infer  # in this process: no second start-up
    infer_dir = osp.join(work_dir, 'infer')
    for args in ([config, checkpoint, *images], ['--backbone', checkpoint, images[0]]):
        args += ['--out-dir', infer_dir, '--device', 'cpu']
        print('\n$ python tools/infer.py ' + ' '.join(args), flush=True)
        if infer(args) != 0:
            raise SystemExit('demo step failed: tools/infer.py ' + ' '.join(args))
    stem = osp.splitext(osp.basename(images[0]))[0]
    tiles = [Image.open(images[0]).convert('RGB')] + [
        Image.open(osp.join(infer_dir, 'features', f'{stem}_stage{k}.png')) for k in range(1, 5)]
    sheet = Image.new('RGB', (sum(t.width for t in tiles), max(t.height for t in tiles)), 'white')
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (sum(t.width for t in tiles[:i]), 0))
    picture = osp.join(work_dir, 'features.png')
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(picture)
    return [f'tools/infer.py on {len(images)} images: {osp.join(infer_dir, "overlays")}',
            f'backbone features of {osp.basename(images[0])} (image, then stage1..4 as PCA colours): {picture}']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('task', choices=sorted(TASKS))
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--backbone-from', metavar='WORK_DIR',
                        help="start the backbone from the best checkpoint in another demo's train dir "
                        '(the detection demo uses the segmentation demo\'s, as detectors start from '
                        'pretrained backbones)')
    args = parser.parse_args()
    task = TASKS[args.task]
    config, work_dir = task['config'], osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    options = {}
    backbone = newest_best(args.backbone_from) if args.backbone_from else None
    if backbone:
        options = {'model.backbone.init_cfg.type': 'Pretrained', 'model.backbone.init_cfg.checkpoint': backbone}
        print(f'backbone starts from {backbone} (loaded by our strict loader)')
    elif args.backbone_from:
        print(f'note: no best_*.pth in {args.backbone_from}; the backbone starts from scratch')
    cfg_options = ['--cfg-options', *(f'{k}={v}' for k, v in options.items())] if options else []
    digest = config_digest(config) + ('-' + osp.basename(backbone) if backbone else '')
    summary_file = osp.join(work_dir, 'summary.json')
    if osp.isfile(summary_file) and json.load(open(summary_file)).get('config_digest') == digest:
        print(open(osp.join(work_dir, 'summary.md')).read())
        print(f'(already done: delete {work_dir} to run the {args.task} demo again)')
        return

    demo_start = time.perf_counter()
    run('tools/make_demo_data.py', '--out', DEMO_DATA, step='data')

    untrained = osp.join(work_dir, 'untrained.pth')
    with timed('untrained baseline'):
        save_untrained(config, untrained, options)
    run('tools/test.py', config, untrained, '--work-dir', osp.join(work_dir, 'test_untrained'),
        step='untrained baseline')
    before = last_metrics(osp.join(work_dir, 'test_untrained'))

    train_dir = osp.join(work_dir, 'train')
    done_marker = osp.join(train_dir, 'done.json')
    if not (osp.isfile(done_marker) and json.load(open(done_marker)).get('config_digest') == digest):
        resume = ['--resume'] if osp.isfile(osp.join(train_dir, 'last_checkpoint')) else []
        run('tools/train.py', config, '--work-dir', train_dir, *resume, *cfg_options, step='train')
        with open(done_marker, 'w') as f:
            json.dump({'config_digest': digest}, f)
    checkpoint = newest_best(train_dir) or open(osp.join(train_dir, 'last_checkpoint')).read().strip()

    vis_dir, pred_dir = osp.join(work_dir, 'vis'), osp.join(work_dir, 'predictions')
    run('tools/test.py', config, checkpoint, '--work-dir', osp.join(work_dir, 'test'),
        '--show-dir', vis_dir, '--out', pred_dir, step='test')
    after = last_metrics(osp.join(work_dir, 'test'))
    if args.task == 'det':
        results = [osp.join(pred_dir, f'results.{kind}.json') for kind in ('bbox', 'segm')]
        run('tools/coco_eval.py', '--ann', osp.join(DEMO_DATA, 'coco/annotations/instances_val2017.json'),
            '--results', *results, '--json-out', osp.join(work_dir, 'coco_eval.json'), step='coco_eval')

    run('tools/plot_logs.py', train_dir, '--out-dir', osp.join(work_dir, 'plots'), step='pictures')
    with timed('infer + features'):
        inference = infer_and_features(config, checkpoint, demo_images(args.task), work_dir)
    with timed('pictures'):
        sheet = tile_predictions(vis_dir, osp.join(work_dir, 'predictions.png'))
    total = time.perf_counter() - demo_start

    rows = [f'| {key} | {before.get(key, float("nan")):.4g} | {after.get(key, float("nan")):.4g} |'
            for key in task['report']]
    text = '\n'.join([
        f'# {args.task} demo: {osp.basename(config)}', '',
        '| metric | untrained | trained |', '|---|---|---|', *rows, '',
        f'best checkpoint: {checkpoint}',
        f'curves: {osp.join(work_dir, "plots")}/loss.png, metrics.png',
        f'predictions next to ground truth: {sheet or vis_dir}', *inference, '',
        f'wall time of this run: {total:.0f} s (' + ', '.join(
            f'{step} {seconds:.0f} s' for step, seconds in STEP_SECONDS.items()) + ')', ''])
    with open(osp.join(work_dir, 'summary.md'), 'w') as f:
        f.write(text)
    with open(summary_file, 'w') as f:
        json.dump({'config_digest': digest, 'config': config, 'checkpoint': checkpoint,
                   'untrained': before, 'trained': after, 'seconds': {'total': total, **STEP_SECONDS}},
                  f, indent=2)
    print('\n' + text)


if __name__ == '__main__':
    main()
