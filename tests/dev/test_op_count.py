"""dev/op_count.py, the operator count by calling function: views told apart, keys from the calling chain."""
from __future__ import annotations

import torch

from convnextv2_dense.bench.sync_ops import OperatorCounter
from suite_support import import_tool


def load_probe():
    return import_tool('op_count', folder='dev')


def test_operators_outside_mm_code_count_as_torch_and_views_apart():
    probe = load_probe()
    counter = OperatorCounter(probe.function_chain(depth=3))
    x = torch.randn(4, 4)
    with counter:
        (x.t() + 1).sum()
    assert dict(counter.counts) == {'torch': 2, 'torch [view]': 1}  # add and sum; the transpose is a view


def test_operators_are_keyed_by_the_mm_functions_that_called_them():
    probe = load_probe()
    from convnextv2_dense.mm.fast_targets import sample_pos_neg_masks
    gt_inds, keys = torch.tensor([[1, 0, 0, -1], [0, 2, 0, 0]]), torch.rand(2, 4)
    counter = OperatorCounter(probe.function_chain(depth=2))
    with counter:
        sample_pos_neg_masks(gt_inds, keys, num=2, pos_fraction=0.5)
    callers = {key.removesuffix(' [view]') for key in counter.counts}
    assert callers == {'sample_pos_neg_masks', 'sample_pos_neg_masks>draw_counts',
                       'sample_pos_neg_masks>_largest_keys_mask'}
    assert counter.counts['sample_pos_neg_masks>_largest_keys_mask'] >= 2 * 4  # where, topk, arange, scatter, ...
