"""Plot training losses and validation metrics from mmengine's json scalar logs.

Usage::

    python tools/plot_logs.py WORK_DIR_OR_JSON [WORK_DIR_OR_JSON ...] --out-dir DIR [--keys loss mIoU ...]

A work dir is searched for its newest ``TIMESTAMP/vis_data/scalars.json``. Writes ``DIR/loss.png``
(every loss against the iteration) and ``DIR/metrics.png`` (validation metrics), and prints their paths.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.bench.plot_logs import plot_logs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('paths', nargs='+', help='work dirs or json scalar logs; several runs are overlaid')
    parser.add_argument('--out-dir', required=True, help='directory for loss.png and metrics.png')
    parser.add_argument('--keys', nargs='+', help='keys to plot (default: every loss and validation metric)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = plot_logs(args.paths, args.out_dir, keys=args.keys)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if not any(p.name == 'metrics.png' for p in written) and args.keys is None:
        print('note: no validation metrics in the logs yet, metrics.png not written', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
