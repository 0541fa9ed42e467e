"""Benchmark ConvNeXt V2: prints a markdown table to stdout (progress goes to stderr), optionally JSON.

Usage::

    # backbone alone, ours vs HF transformers (and timm if installed), after an fp32 parity check
    python tools/benchmark.py [backbone]
        [--impl ours ours-plain ours-fused ours-matmuls ours-compile ours-fused-compile hf timm timm-compile]
        [--arch tiny base]
        [--input 512 224] [--batch N] [--mode train infer] [--dtype bf16|fp16|fp32] [--no-channels-last]
        [--warmup 10] [--compile-warmup 20] [--iters 30] [--profile 3] [--device cpu] [--json-out FILE]

    # one full training iteration of an mm config, our backbone and HF's in the same process; --profile N
    # adds where N steps spend their time (GPU busy vs wall, launches, top kernels, top host ops)
    python tools/benchmark.py full --config configs/upernet_convnextv2_base_ade20k.py
        --backbone-impl stock ours ours-eager ours-plain ours-fused ours-compile hf [--profile 3]
        [--img-per-gpu 2] [--img-size 512] [--boxes 20] [--warmup 5] [--iters 20] [--json-out FILE]

    # the same under DDP, one process per GPU (the config's model_wrapper_cfg; rank 0 reports)
    torchrun --nproc_per_node 8 tools/benchmark.py full --config configs/upernet_convnextv2_base_ade20k.py
        --backbone-impl stock ours-eager ours

Default batches are the measured baselines' (tiny@512: 32, base@512: 16, base@224: 128). On CPU the
compiled rows are skipped unless ``--impl`` names them. Exit status 1 when ours and HF disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.bench.backbone import (DTYPES, MODES, BackboneSettings, backbone_benchmark,  # noqa: E402
                                             format_backbone_report, parity_failed)
from convnextv2_dense.bench.impls import FULL_IMPLS, IMPLS  # noqa: E402
from convnextv2_dense.bench.timing import resolve_device  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command')
    backbone = commands.add_parser('backbone', help='the backbone alone: ours vs HF (and timm)')
    backbone.add_argument('--impl', nargs='+', choices=IMPLS,
                          help='implementations (default: all; on CPU all but the compiled ones)')
    backbone.add_argument('--arch', nargs='+', default=['tiny', 'base'], help='archs (default: tiny base)')
    backbone.add_argument('--input', nargs='+', type=int, default=[512, 224], help='square input sizes')
    backbone.add_argument('--batch', type=int, help='one batch for every row (default: per arch and input)')
    backbone.add_argument('--mode', nargs='+', choices=MODES, default=list(MODES))
    backbone.add_argument('--dtype', choices=tuple(DTYPES), default='bf16', help='autocast dtype (fp32: none)')
    backbone.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True)
    backbone.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction, default=True)
    backbone.add_argument('--warmup', type=int, default=10)
    backbone.add_argument('--compile-warmup', type=int, default=20, help='warm-up of the compiled rows')
    backbone.add_argument('--compile-mode', help='torch.compile mode, e.g. max-autotune (default: its default)')
    backbone.add_argument('--iters', type=int, default=30)
    backbone.add_argument('--no-parity', action='store_true', help='skip the parity check against HF')
    backbone.add_argument('--profile', type=int, default=0, metavar='STEPS',
                          help='after the timings, profile STEPS steps of every row with torch.profiler '
                               '(default: 0, no profile)')
    full = commands.add_parser('full', help='one training iteration of an mmseg/mmdet config')
    full.add_argument('--config', required=True, help='mmseg or mmdet config file')
    full.add_argument('--backbone-impl', nargs='+', choices=FULL_IMPLS, default=['ours'],
                      help="'ours' no compile (the config's fused_block and cuda_graph), 'ours-eager' without the "
                           "CUDA graph step, 'ours-plain' the plain block, 'ours-fused' the fused block in every "
                           "block, 'ours-compile' compile=True, 'stock' the plain block with the stock mm "
                           "components instead of our fast variants, 'hf' HF's ConvNextV2Backbone (same heads, "
                           "same param groups)")
    full.add_argument('--img-per-gpu', type=int, help='images per step (default: 2 seg, 4 det)')
    full.add_argument('--img-size', type=int, help="square image size (default: the seg crop, 1024 det)")
    full.add_argument('--boxes', type=int, default=20, help='random boxes and masks per detection image')
    full.add_argument('--warmup', type=int, default=5)
    full.add_argument('--iters', type=int, default=20)
    full.add_argument('--profile', type=int, default=0, metavar='STEPS',
                      help='also profile STEPS steps per backbone with torch.profiler (default: 0, no profile)')
    for sub in (backbone, full):
        sub.add_argument('--device', help="'cuda', 'cuda:1' or 'cpu' (default: cuda if available)")
        sub.add_argument('--json-out', help='also write the report as JSON to this file')
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ('backbone', 'full', '-h', '--help'):
        argv = ['backbone', *argv]
    return parser.parse_args(argv)


def run_backbone(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    impls = args.impl or [i for i in IMPLS if device.type == 'cuda' or not i.endswith('-compile')]
    settings = BackboneSettings(
        impls=tuple(impls), archs=tuple(args.arch), inputs=tuple(args.input), modes=tuple(args.mode),
        batch=args.batch, dtype=args.dtype, channels_last=args.channels_last, warmup=args.warmup,
        compile_warmup=args.compile_warmup, iters=args.iters, compile_mode=args.compile_mode,
        cudnn_benchmark=args.cudnn_benchmark, parity=not args.no_parity, profile=args.profile, device=str(device))
    return backbone_benchmark(settings, log=lambda line: print(line, file=sys.stderr, flush=True))


def run_full(args: argparse.Namespace) -> dict:
    from convnextv2_dense.bench.full import FullSettings, full_benchmark
    if not os.path.isfile(args.config):
        raise SystemExit(f'error: config file not found: {args.config}')
    settings = FullSettings(
        config=args.config, backbone_impls=tuple(args.backbone_impl), img_per_gpu=args.img_per_gpu,
        img_size=args.img_size, boxes=args.boxes, warmup=args.warmup, iters=args.iters, profile=args.profile,
        device=args.device)
    return full_benchmark(settings, log=lambda line: print(line, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_full(args) if args.command == 'full' else run_backbone(args)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if report.get('rank'):
        return 0  # under torchrun, rank 0 reports
    if report['kind'] == 'full':
        from convnextv2_dense.bench.full import format_full_report
        print(format_full_report(report), flush=True)
    else:
        print(format_backbone_report(report), flush=True)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'wrote {args.json_out}', file=sys.stderr)
    if parity_failed(report):
        print('error: ours and HF disagree (see the parity line); the speed numbers are not comparable',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
