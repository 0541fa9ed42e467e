"""The CPU count of operations that would synchronise on a GPU: one count per synchronising call, at its line."""
from __future__ import annotations

import torch

from convnextv2_dense.bench import profiling
from convnextv2_dense.bench.sync_ops import would_sync_sites


def _line_of(marker: str) -> str:
    """``file:line`` of the line of this file that ends with ``# marker``."""
    with open(__file__) as f:
        number = next(i for i, text in enumerate(f, 1) if text.rstrip().endswith(f'# {marker}'))
    return f'{profiling._site_path(__file__, profiling._import_roots())}:{number}'


def syncing_step(x: torch.Tensor) -> None:
    x.new_tensor([1.0, 2.0])  # copy-from-host
    x[x > 0]  # mask-index
    (x > 0).nonzero()  # nonzero
    x.sum().item()  # item
    torch.unique(x)  # unique
    if x.max() > 0:  # bool
        pass
    (x > 0).sum().tolist()  # tolist
    torch.repeat_interleave(torch.arange(2), torch.arange(1, 3))  # repeat-interleave
    y = x.clone()
    y[x > 1] = 0  # mask-assign


def quiet_step(x: torch.Tensor) -> None:
    y = x.clone()
    y[torch.arange(3)] = 1.0  # a scalar put at indices: made on the GPU there, no copy
    y.masked_fill_(x > 0, 0.5)
    torch.where(x > 0, x, 0.0).topk(3)
    torch.repeat_interleave(torch.arange(2), torch.arange(1, 3), output_size=3)
    x.new_full((3,), 1.0) + x.new_zeros(3)
    x[1:4].argmax()


def test_each_kind_of_synchronising_call_counts_once_at_its_line():
    sites = dict(would_sync_sites(lambda: syncing_step(torch.randn(100))))
    markers = ['copy-from-host', 'mask-index', 'nonzero', 'item', 'unique', 'bool', 'tolist',
               'repeat-interleave', 'mask-assign']
    assert sites == {_line_of(marker): 1 for marker in markers}


def test_calls_that_stay_on_the_device_count_nothing():
    assert would_sync_sites(lambda: quiet_step(torch.randn(100))) == []


def test_a_scalar_put_into_a_slice_counts_nothing():
    def step():
        x = torch.zeros(10, dtype=torch.bool)
        x[:4] = 1
        x[torch.arange(2)] = True
    assert would_sync_sites(step) == []


def test_operators_are_counted_by_calling_file():
    from convnextv2_dense.bench.sync_ops import operation_files
    x = torch.randn(10, requires_grad=True)

    def step():
        y = (x * 2).sum()  # two operators from this file
        y.backward()       # and the backward's, here too
    files = dict(operation_files(step))
    here = profiling._site_path(__file__, profiling._import_roots())
    assert list(files) == [here] and files[here] >= 3
