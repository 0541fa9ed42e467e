"""The operations of a step that would make the host wait for a GPU, found on any device (the CPU included);
and where a step's operations come from.

On a GPU, :func:`.profiling.sync_sites` counts the synchronisations torch's CUDA sync debug mode reports. That
needs a GPU. :func:`would_sync_sites` runs the step under a dispatch mode instead and counts, by calling line,
every operator that synchronises when its tensors are on a CUDA device:

- reading values on the host (``.item()``, ``bool(t)``, ``int(t)``: ``aten::_local_scalar_dense``;
  ``.tolist()``, ``.cpu()``);
- an output whose size depends on the values (``nonzero``, ``unique``, ``masked_select``, indexing or
  assigning with a boolean mask, ``repeat_interleave`` without ``output_size``);
- a tensor made from host data (``torch.tensor(...)``, ``x.new_tensor(...)``: ``aten::lift_fresh``), a copy
  from pageable memory on a GPU.

What it cannot see: copies of tensors that already live on the host (``cpu_tensor.to(device)`` is no operator on
the CPU) and synchronisations inside extension ops that bypass the dispatcher (mmcv's NMS); and it counts a
``.cpu()`` of a tensor that would live on the host in a GPU run too. So on the CPU it
finds most, not all, of what the GPU count finds; its worth is that a CPU test can hold a step to a budget.

:func:`operation_files` counts all of a step's operators by calling file: on a host-bound GPU step, where the
launches come from.
"""
from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .profiling import _calling_line, _import_roots, rank_sites

# Operators that read device values on the host, or whose output size the host must learn from the device.
SYNCING_OPS = frozenset({
    'aten::_local_scalar_dense', 'aten::nonzero', 'aten::argwhere', 'aten::masked_select',
    'aten::unique_consecutive', 'aten::unique_dim', 'aten::unique_dim_consecutive', 'aten::_unique',
    'aten::_unique2', 'aten::equal', 'aten::lift_fresh',
})
# Tensor methods that copy to the host (on the CPU they are no operators, so the dispatch mode cannot see them).
HOST_READS = frozenset({torch.Tensor.tolist, torch.Tensor.cpu})
# What ``t[...] = scalar`` stores the scalar with (after views of ``t``): the scalar is no copy from the host.
SCALAR_STORES = frozenset({'aten::index_put', 'aten::index_put_', 'aten::copy_', 'aten::fill_'})
# Operators that synchronise when one of their index tensors is a mask (a hidden ``nonzero``).
# (``index_put_`` runs ``_index_put_impl_``, which is not listed, so one assignment counts once.)
MASK_INDEXED_OPS = frozenset({'aten::index', 'aten::index_put', 'aten::index_put_'})


def would_sync(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    """Whether ``func(*args, **kwargs)`` makes the host wait when its tensors are on a CUDA device."""
    name = func.name().split('.')[0]
    if name in SYNCING_OPS:
        return True
    if func.name() == 'aten::repeat_interleave.Tensor':  # repeats only; the other overloads call this one
        return (args[1] if len(args) > 1 else kwargs.get('output_size')) is None
    if name in MASK_INDEXED_OPS and len(args) > 1:
        indices = args[1] if isinstance(args[1], (list, tuple)) else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return False


def _caller(roots: list[str]) -> str | None:
    """``file:line`` of the innermost frame outside torch and outside this module (its modes)."""
    stack = [frame for frame in traceback.extract_stack() if frame.filename != __file__]
    return _calling_line(stack, roots)


class _SyncOpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.roots = _import_roots()
        self.counts: Counter = Counter()
        self._lifted: tuple[torch.Tensor, str] | None = None  # the last scalar made from host data, and where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.name()
        if self._lifted is not None and any(value is self._lifted[0] for value in args[1:3]) \
                and name.split('.')[0] in SCALAR_STORES:
            # ``t[mask] = 0``, ``t[:n] = 0``: on a GPU the scalar is made there, not copied over
            self.counts[self._lifted[1]] -= 1
            self._lifted = None
        if would_sync(func, args, kwargs):
            site = _caller(self.roots) or name
            self.counts[site] += 1
            if name.startswith('aten::lift_fresh') and out.dim() == 0:
                self._lifted = (out, site)
        return out


class _HostReadCounter(TorchFunctionMode):
    """``t.tolist()`` and ``t.cpu()``: copies to the host, which are no operators on the CPU."""

    def __init__(self, counts: Counter, roots: list[str]) -> None:
        super().__init__()
        self.counts, self.roots = counts, roots

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.counts[_caller(self.roots) or func.__name__] += 1
        return func(*args, **(kwargs or {}))


def would_sync_sites(step: Callable[[], object]) -> list[list]:
    """Run ``step`` once; the lines whose operators would synchronise on a GPU, as
    ``[[file:line, count], ...]`` (the innermost frame outside torch; most first, at most
    :data:`.profiling.TOP` lines, the rest summed as ``other``)."""
    counter = _SyncOpCounter()
    with counter, _HostReadCounter(counter.counts, counter.roots):
        step()
    return rank_sites(+counter.counts)  # (+ drops the lines left at zero)


class OperatorCounter(TorchDispatchMode):
    """Counts the operators run under it by ``key(op)`` (called at each operator, inside its caller's stack), in
    ``counts``."""

    def __init__(self, key: Callable[[torch._ops.OpOverload], str]) -> None:
        super().__init__()
        self.key = key
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.key(func)] += 1
        return func(*args, **(kwargs or {}))


def operation_files(step: Callable[[], object]) -> list[list]:
    """Run ``step`` once; its operators (each about one kernel launch, or a view, on a GPU) counted by the
    calling file, as ``[[file, count], ...]``, most first (at most :data:`.profiling.TOP`, the rest as
    ``other``). The backward's operators count at the line that called ``backward()``."""
    roots = _import_roots()

    def calling_file(func: torch._ops.OpOverload) -> str:
        site = _caller(roots)
        return site.rsplit(':', 1)[0] if site else 'torch'
    counter = OperatorCounter(calling_file)
    with counter:
        step()
    return rank_sites(counter.counts)
