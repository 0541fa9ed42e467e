"""Where a training step's time goes: GPU busy time against wall time, launches, top kernels, top host ops,
and the lines of Python that make the host wait for the GPU.

:func:`profile_step` runs a step under ``torch.profiler`` and :func:`format_profile` prints what it found
as markdown. GPU busy time is the union of the device intervals (kernels, copies, memsets) per step, so a
step whose busy time is far under its wall time waits on the host (Python, launches, synchronisations).
:func:`sync_sites` runs one more step in torch's CUDA sync debug mode and counts, per calling line, the
operations that synchronised (``.item()``, boolean indexing, ``nonzero``, copies from pageable memory).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch

from .timing import synchronize

# Host calls that put work on the GPU: one per kernel launch or asynchronous copy/memset.
LAUNCH_CALLS = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx',
                'cudaMemcpyAsync', 'cudaMemsetAsync', 'cudaLaunchCooperativeKernel')
TOP = 12


def _is_device(event: Any) -> bool:
    return getattr(event.device_type, 'name', str(event.device_type)).upper() in ('CUDA', 'PRIVATEUSE1')


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals."""
    total, end = 0.0, float('-inf')
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def profile_step(step: Callable[[], object], iters: int, device: torch.device, warmup: int = 2) -> dict[str, Any]:
    """Profile ``iters`` calls of ``step`` (after ``warmup`` untraced ones); per-step numbers.

    Args:
        step (Callable): One training step.
        iters (int): Profiled steps (at least 1).
        device (torch.device): Where the step runs; on CPU there is no GPU column.
        warmup (int): Steps before the profiler starts. Defaults to 2.

    Returns:
        dict: ``wall_ms`` (host clock per step under the profiler, which adds overhead), ``gpu_busy_ms``,
        ``device_events`` and ``launches`` per step (None on CPU), ``top_kernels`` and ``top_host_ops``
        (lists of ``[name, ms per step, calls per step]``, largest first).
    """
    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            step()
        synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / iters
    return summarize(prof.events(), iters, wall_ms, device.type == 'cuda')


def sync_sites(step: Callable[[], object], device: torch.device) -> list[list] | None:
    """The lines that made one call of ``step`` wait for the GPU: ``[[file:line, count], ...]``, most first,
    from torch's CUDA sync debug mode (None off CUDA)."""
    if device.type != 'cuda':
        return None
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        sites = count_sync_warnings(step)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    synchronize(device)
    return sites


# What torch's sync debug mode warns at each synchronising call (c10/cuda/CUDAFunctions.cpp).
SYNC_WARNING = 'called a synchronizing CUDA operation'


def count_sync_warnings(step: Callable[[], object]) -> list[list]:
    """Run ``step`` once; count its sync debug warnings by calling line: the innermost frame outside torch
    (``torch.unique`` in mmdet's sampler counts as the sampler's line). Most first, then by name; at most
    ``TOP`` lines, the rest summed as ``other``."""
    roots = _import_roots()
    counts: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING in str(message):
            counts[_calling_line(traceback.extract_stack()[:-1], roots) or
                   f'{_site_path(filename, roots)}:{lineno}'] += 1

    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = record  # restored on exit
        step()
    return rank_sites(counts)


def rank_sites(counts: Counter) -> list[list]:
    """``[[site, count], ...]``: most first, then by name; at most ``TOP`` sites, the rest summed as ``other``."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    top = [[site, n] for site, n in ranked[:TOP]]
    rest = sum(n for _, n in ranked[TOP:])
    return top + ([['other', rest]] if rest else [])


def _calling_line(stack: list, roots: list[str]) -> str | None:
    """``file:line`` of the innermost frame of ``stack`` that is neither torch's nor the warnings module's."""
    for frame in reversed(stack):
        if frame.filename == warnings.__file__:
            continue
        path = _site_path(frame.filename, roots)
        if not path.startswith(('torch/', '<frozen')):
            return f'{path}:{frame.lineno}'
    return None


def _import_roots() -> list[str]:
    """The ``sys.path`` entries and the working directory, longest first, each ending in '/'."""
    roots = {p.replace(os.sep, '/').rstrip('/') + '/' for p in (*sys.path, os.getcwd()) if p}
    return sorted(roots, key=len, reverse=True)


def _site_path(filename: str, roots: list[str]) -> str:
    """A file name without its import root: ``mmdet/models/...`` rather than ``/usr/lib/.../mmdet/...``
    (the longest of ``roots`` that holds it; else what follows site-packages)."""
    norm = filename.replace(os.sep, '/')
    for root in roots:
        if norm.startswith(root):
            return norm[len(root):]
    for marker in ('site-packages/', 'dist-packages/'):
        if marker in norm:
            return norm.rsplit(marker, 1)[1]
    return norm


def summarize(events: list, iters: int, wall_ms: float, cuda: bool) -> dict[str, Any]:
    """Per-step totals of a profiler's event list (see :func:`profile_step`)."""
    intervals, kernels, host = [], defaultdict(lambda: [0.0, 0]), defaultdict(lambda: [0.0, 0])
    launches = 0
    for event in events:
        if _is_device(event):
            intervals.append((event.time_range.start, event.time_range.end))
            entry = kernels[event.name]
            entry[0] += event.time_range.elapsed_us()
            entry[1] += 1
        else:
            entry = host[event.name]
            entry[0] += event.self_cpu_time_total
            entry[1] += 1
            launches += event.name in LAUNCH_CALLS

    def top(table: dict) -> list[list]:
        rows = sorted(table.items(), key=lambda item: -item[1][0])[:TOP]
        return [[name, us / 1e3 / iters, calls / iters] for name, (us, calls) in rows]
    return dict(iters=iters, wall_ms=wall_ms,
                gpu_busy_ms=_union_us(intervals) / 1e3 / iters if cuda else None,
                device_events=len(intervals) / iters if cuda else None,
                launches=launches / iters if cuda else None,
                top_kernels=top(kernels), top_host_ops=top(host))


def _short(name: str, width: int = 90) -> str:
    name = name.replace('|', '/').replace('\n', ' ')
    return name if len(name) <= width else name[:width - 3] + '...'


def format_profile(title: str, prof: dict[str, Any]) -> list[str]:
    """Markdown lines: a summary sentence, then the top kernels and the top host ops."""
    def num(value: float | None, spec: str = '.1f') -> str:
        return '-' if value is None else format(value, spec)
    busy = prof['gpu_busy_ms']
    share = f' ({100 * busy / prof["wall_ms"]:.0f}% of the wall)' if busy is not None else ''
    lines = [f'profile of {title}: {prof["iters"]} steps under torch.profiler, per step: wall {num(prof["wall_ms"])} '
             f'ms, GPU busy {num(busy)} ms{share}, {num(prof["device_events"], ".0f")} device events, '
             f'{num(prof["launches"], ".0f")} launches from the host', '']
    for heading, key in (('GPU kernel', 'top_kernels'), ('host op (self time)', 'top_host_ops')):
        if not prof[key]:
            continue
        lines += [f'| {heading} | ms/step | calls/step |', '|---|---|---|']
        lines += [f'| `{_short(name)}` | {ms:.2f} | {calls:.0f} |' for name, ms, calls in prof[key]]
        lines.append('')
    sites = prof.get('sync_sites')
    if sites:
        what = ('host synchronisations of one step' if prof.get('sync_sites_source', 'cuda') == 'cuda' else
                'operations of one step that would synchronise on a GPU (counted on the CPU, which cannot see '
                'copies of host tensors or syncs inside extension ops)')
        lines += [f'{what}: {sum(n for _, n in sites)}, by calling line', '',
                  '| line | syncs/step |', '|---|---|']
        lines += [f'| `{_short(site)}` | {n} |' for site, n in sites]
        lines.append('')
    files = prof.get('operation_files')
    if files:
        lines += [f'operators of one step: {sum(n for _, n in files)}, by calling file (each about one kernel '
                  'launch or a view on a GPU; the backward counts where backward() was called)', '',
                  '| file | operators/step |', '|---|---|']
        lines += [f'| `{_short(site)}` | {n} |' for site, n in files]
        lines.append('')
    return lines
