"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--out DIR] [--show-dir DIR] [--tta]``

Segmentation configs print the per-class IoU/Acc table and mIoU; ``--out`` writes the predicted label
maps as PNG. Detection configs print bbox and segm AP (12 COCO numbers each) and a per-category table;
``--out`` writes ``results.bbox.json`` and ``results.segm.json`` for ``tools/coco_eval.py``. ``--out x.pkl``
writes the pickle mmdet's analysis tools read, as mmdet's own test tool does.
"""
import argparse
import os
import os.path as osp
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.mm.checkpoint_safety import safe_checkpoint_loading  # noqa: E402
from convnextv2_dense.mm.runner_cli import (TRUST_SWITCH, add_common_args, build_runner, load_config,  # noqa: E402
                                             prepare_testing, run_tool, shut_down_distributed, task_of)
from convnextv2_dense.mm.test_options import (check_checkpoint_arg, default_det_tta, dump_results,  # noqa: E402
                                              is_pickle_out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) an mmseg segmentor or mmdet detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint: a path, or a URL / prefix mmengine loads (open-mmlab://...)')
    parser.add_argument('--out', metavar='DIR_OR_PKL',
                        help='a .pkl file: dump predictions as mmdet\'s test tool does (for its analysis tools); '
                        'otherwise a folder: predicted label maps (PNG, segmentation) or results.bbox.json and '
                        'results.segm.json (detection)')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', metavar='DIR', help='write images with predictions drawn on them here')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each shown image stays up')
    parser.add_argument('--tta', action='store_true',
                        help="segmentation: the config's tta_pipeline (shipped configs: the paper's multi-scale "
                        "test, 0.75..1.25 x 2048x512, each also flipped); detection: the config's TTA, or mmdet's "
                        'default flip TTA when it has none')
    add_common_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args)
    check_checkpoint_arg(args.checkpoint)
    cfg.load_from = args.checkpoint
    task = task_of(cfg)

    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise SystemExit('error: --show/--show-dir need default_hooks.visualization in the config')
        hook.update(draw=True, interval=1)
        if args.show:
            hook.update(show=True, wait_time=args.wait_time)
        if args.show_dir:
            show_dir = osp.abspath(args.show_dir)
            if task == 'seg':
                cfg.visualizer.save_dir = show_dir
            else:
                hook.test_out_dir = show_dir

    if args.out and not is_pickle_out(args.out):
        out = osp.abspath(args.out)
        os.makedirs(out, exist_ok=True)
        if task == 'seg':
            cfg.test_evaluator.update(output_dir=out, keep_results=True)
        else:
            cfg.test_evaluator.outfile_prefix = osp.join(out, 'results')

    if args.tta:
        if task == 'det':
            default_det_tta(cfg)
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('error: --tta needs a segmentation config with tta_model and tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    prepare_testing(cfg)
    runner = build_runner(cfg, 'test')
    if is_pickle_out(args.out):
        dump_results(runner, args.out, task)
    with safe_checkpoint_loading(trust=args.trust_checkpoint, switch=TRUST_SWITCH):
        runner.test()
    shut_down_distributed()


if __name__ == '__main__':
    run_tool(main)
