"""Write the synthetic demo datasets (ADE20K and COCO layouts) used by ``configs/demo``.

Usage::

    python tools/make_demo_data.py --out data/demo [--num-train 160] [--num-val 40] [--size 128]
        [--seed 0] [--only ade|coco] [--force]

Running it again with the same parameters does nothing; other parameters, or ``--force``, rewrite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.data.synthetic import make_demo_data  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/demo', help='output directory (default: data/demo)')
    parser.add_argument('--num-train', type=int, default=160, help='training images per dataset')
    parser.add_argument('--num-val', type=int, default=40, help='validation images per dataset')
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--only', choices=('ade', 'coco'), help='write one dataset only')
    parser.add_argument('--force', action='store_true', help='rewrite even if an up-to-date copy exists')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        results = make_demo_data(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                                 seed=args.seed, force=args.force,
                                 datasets=(args.only, ) if args.only else ('ade', 'coco'))
    except (ValueError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for name, result in results.items():
        print(f'{name}: {"written" if result.written else "up to date"}, data_root={result.data_root}')
    print(f'done in {time.perf_counter() - start:.1f}s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
