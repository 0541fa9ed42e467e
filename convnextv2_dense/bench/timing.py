"""Timing, memory and table helpers shared by the benchmarks (:mod:`.backbone`, :mod:`.full`).

Imports only torch and the standard library; no other module of :mod:`convnextv2_dense.bench`.
"""
from __future__ import annotations

import gc
import importlib.metadata
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Row:
    """One measured configuration; ``status`` is 'ok', 'OOM', 'not installed' or 'error: ...'."""

    impl: str
    arch: str
    input: int
    batch: int
    mode: str
    status: str = 'ok'
    img_per_s: float | None = None
    ms_per_iter: float | None = None
    ms_median: float | None = None
    ms_max: float | None = None
    gc_ms: float | None = None
    peak_mem_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    first_iter_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | None) -> torch.device:
    """``device``, or 'cuda' if available, else 'cpu'."""
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Free what an earlier row left, so that the next row's peak is its own: unreachable objects, the
    allocator's cache, and cuBLAS's workspaces (32 MiB per stream that ran a matrix product, kept for the
    process's life: without this a later row's peak counts an earlier row's)."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        clear_workspaces = getattr(torch._C, '_cuda_clearCublasWorkspaces', None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()


def measure(step: Callable[[], object], warmup: int, iters: int, device: torch.device) -> dict[str, Any]:
    """Run ``step`` ``warmup`` times (the first one timed alone), then ``iters`` timed times.

    As in training (``GcFreezeHook``), the objects alive before the first step are frozen out of the
    garbage collector's passes for the run; ``gc_ms`` is the host time the collector still took during the
    timed steps (the host launches nothing meanwhile).

    On CUDA the timed loop is bracketed by CUDA events and the peak memory is ``max_memory_allocated`` since
    the start (``max_memory_reserved`` too: what the caching allocator and any CUDA graph's private pool hold,
    what an out-of-memory error is about); on CPU the clock is the wall clock and there is no peak.
    """
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
        synchronize(device)
        with _collector_clock() as collector_ms:
            times = _timed_steps(step, iters, device)
    finally:
        gc.unfreeze()
    cuda = device.type == 'cuda'
    return dict(ms_per_iter=sum(times) / len(times), ms_median=statistics.median(times),
                ms_max=max(times), gc_ms=sum(collector_ms),
                peak_mem_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
                peak_reserved_bytes=torch.cuda.max_memory_reserved(device) if cuda else None, first_iter_s=first)


@contextmanager
def _collector_clock() -> Iterator[list[float]]:
    """A list that gets the milliseconds of each garbage collection that runs inside the ``with``."""
    spans: list[float] = []
    started = 0.0

    def clock(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == 'start':
            started = time.perf_counter()
        else:
            spans.append((time.perf_counter() - started) * 1e3)

    gc.callbacks.append(clock)
    try:
        yield spans
    finally:
        gc.callbacks.remove(clock)


def _timed_steps(step: Callable[[], object], iters: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``iters`` steps: between CUDA events on CUDA, by the wall clock on CPU."""
    if device.type == 'cuda':
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        events[0].record()
        for event in events[1:]:
            step()
            event.record()
        events[-1].synchronize()
        return [a.elapsed_time(b) for a, b in zip(events, events[1:])]
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def record(row: Row, result: dict[str, Any]) -> None:
    """Put :func:`measure`'s result into ``row``, with the throughput it implies."""
    for key, value in result.items():
        setattr(row, key, value)
    row.img_per_s = row.batch * 1e3 / row.ms_per_iter


def status_of(err: BaseException) -> str:
    """'OOM', or 'error: Type: first line' with the traceback on stderr, for a row that failed."""
    if isinstance(err, torch.cuda.OutOfMemoryError) or 'out of memory' in str(err).lower():
        return 'OOM'
    traceback.print_exc()
    message = str(err).strip().splitlines()[0] if str(err).strip() else ''
    return f'error: {type(err).__name__}: {message[:100]}'


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and the versions that matter for the numbers."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'
    env = dict(device=name, device_type=device.type, torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if device.type == 'cuda' else None,
               python=platform.python_version())
    for package in ('transformers', 'timm', 'triton', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation'):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    return env


def fmt_num(value: float | None, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def fmt_gib(value: int | None) -> str:
    return '-' if value is None else f'{value / 2 ** 30:.2f}'


def format_header(env: dict[str, Any]) -> list[str]:
    """The device and the versions that matter, as two markdown lines."""
    versions = ', '.join(f'{k} {env[k]}' for k in ('torch', 'cuda', 'cudnn', 'python', 'transformers', 'timm',
                                                    'triton', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation')
                         if env.get(k) is not None)
    return [f'device: {env["device"]}', f'versions: {versions}']
