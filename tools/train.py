"""Train a segmentor or detector: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] ...``"""
import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.mm.checkpoint_safety import safe_checkpoint_loading  # noqa: E402
from convnextv2_dense.mm.runner_cli import (TRUST_SWITCH, add_common_args, build_runner, load_config,  # noqa: E402
                                             prepare_training, run_tool, shut_down_distributed)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train an mmseg segmentor or mmdet detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir if none is given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the lr by the real batch size over the config's base_batch_size")
    add_common_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    prepare_training(cfg)
    runner = build_runner(cfg, 'train')
    with safe_checkpoint_loading(trust=args.trust_checkpoint, switch=TRUST_SWITCH):
        runner.train()
    shut_down_distributed()


if __name__ == '__main__':
    run_tool(main)
