"""Maintainer probe (not a user tool): the operators of one training step of a config, counted by the chain of
mm functions that called them (views apart), on any device. On a host-bound GPU step each operator that is not
a view is about one kernel launch: this says which component launches what, before a GPU run.

    python dev/op_count.py configs/mask-rcnn_convnextv2_tiny_fpn_3x_coco.py --img-size 256 --depth 4

The numbers in docs/benchmarks.md ("the RPN in one pass") come from this command on the CPU.
"""
import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

VIEWS = frozenset({'aten::view', 'aten::_unsafe_view', 'aten::slice', 'aten::select', 'aten::unsqueeze',
                   'aten::squeeze', 'aten::permute', 'aten::t', 'aten::expand', 'aten::detach', 'aten::as_strided',
                   'aten::_reshape_alias', 'aten::alias', 'aten::transpose', 'aten::split', 'aten::split_with_sizes',
                   'aten::chunk', 'aten::unbind'})
OWN_CODE = ('mmdet', 'mmseg', 'mmengine', 'mmcv', 'convnextv2_dense')


def function_chain(depth: int):
    """An operator's key for :class:`~convnextv2_dense.bench.sync_ops.OperatorCounter`: the chain of mm functions
    above it, from the step's ``loss`` down to ``depth`` calls ('torch' outside mm code), ' [view]' marked."""
    from convnextv2_dense.bench import sync_ops
    skip = {__file__, sync_ops.__file__}

    def key(func) -> str:
        names = [frame.name for frame in traceback.extract_stack()
                 if frame.filename not in skip and any(part in frame.filename for part in OWN_CODE)]
        start = names.index('loss') if 'loss' in names else 0
        chain = '>'.join(names[start:start + depth]) or 'torch'
        return chain + (' [view]' if func.name().split('.')[0] in VIEWS else '')
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--impl', default='ours', help="a row of tools/benchmark.py full ('ours', 'stock', ...)")
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--depth', type=int, default=4, help='calls below the step to tell apart')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--top', type=int, default=30)
    args = parser.parse_args()
    from convnextv2_dense.bench.full import FullSettings, Row, _build, prepare_full
    from convnextv2_dense.bench.sync_ops import OperatorCounter
    setup = prepare_full(FullSettings(args.config, backbone_impls=(args.impl,), img_size=args.img_size,
                                      device=args.device))
    row = Row(args.impl, setup.cfg.model.backbone.get('arch', 'custom'), setup.size, setup.n, 'train')
    model, optim_wrapper = _build(row, setup.cfg, setup.registry, setup.device)
    model.train_step(setup.data, optim_wrapper)  # first-use work (caches, constants) out of the count
    counter = OperatorCounter(function_chain(args.depth))
    with counter:
        model.train_step(setup.data, optim_wrapper)
    total = sum(counter.counts.values())
    not_views = sum(n for key, n in counter.counts.items() if not key.endswith('[view]'))
    print(f'{args.config} ({args.impl}, {setup.n} images of {setup.size}x{setup.size}, {args.device}): '
          f'{total} operators per step, {not_views} not views')
    for key, n in counter.counts.most_common(args.top):
        print(f'{n:6d}  {key}')


if __name__ == '__main__':
    main()
