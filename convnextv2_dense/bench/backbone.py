"""Speed and memory of the ConvNeXt V2 backbone against HF transformers and timm, after a parity check.

Imports only torch; transformers and timm are imported when a row needs them. :func:`backbone_benchmark`
returns a JSON-ready report and :func:`format_backbone_report` turns it into markdown.
``tools/benchmark.py`` is the command line.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..models import ARCHS, ConvNeXtV2, resolve_arch
from ..models.stage_selection import INDEXED_STAGES
from .impls import IMPLS, HFBackbone, build_backbone, installed
from .profiling import format_profile, profile_step
from .timing import (Row, environment, fmt_gib, fmt_num, format_header, free_memory, measure, record, resolve_device,
                     status_of)

MODES: tuple[str, ...] = ('train', 'infer')
DTYPES: dict[str, torch.dtype] = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
KNOWN_BATCH = {('tiny', 512): 32, ('base', 512): 16, ('base', 224): 128}  # the REFERENCE.md baselines
PARITY_INPUT = (1, 3, 64, 96)
PARITY_TOL = 1e-4  # fp32 relative error above which a speed number means nothing


def default_batch(arch: str, size: int) -> int:
    """The baselines' batch where there is one, else base@512's 16 scaled by activation size, a power of 2."""
    if (arch, size) in KNOWN_BATCH:
        return KNOWN_BATCH[(arch, size)]

    def activations(spec):  # blocks x width per pixel of the input, stage by stage
        return sum(d * c / 4 ** i for i, (d, c) in enumerate(zip(spec.depths, spec.dims)))
    scale = (512 / size) ** 2 * activations(ARCHS['base']) / activations(resolve_arch(arch))
    return max(1, 2 ** round(math.log2(16 * scale)))


@dataclass(frozen=True)
class BackboneSettings:
    """What :func:`backbone_benchmark` measures; every (arch, input, mode, impl) is one row.

    Args:
        impls (tuple[str, ...]): Among :data:`IMPLS`. Defaults to ('ours', 'hf').
        archs (tuple[str, ...]): Arch names. Defaults to ('tiny', 'base').
        inputs (tuple[int, ...]): Square input sizes. Defaults to (512, 224).
        modes (tuple[str, ...]): 'train' (forward + backward) and/or 'infer'. Defaults to both.
        batch (int, optional): One batch for every row. Defaults to None (:func:`default_batch`).
        dtype (str): Autocast dtype, 'bf16', 'fp16' or 'fp32' (no autocast). Defaults to 'bf16'.
        channels_last (bool): Model and input in channels_last. Defaults to True.
        warmup (int): Untimed iterations (at least one). Defaults to 10.
        compile_warmup (int): Untimed iterations for compiled rows. Defaults to 20.
        iters (int): Timed iterations. Defaults to 30.
        compile_mode (str, optional): ``torch.compile`` mode. Defaults to None (its default).
        cudnn_benchmark (bool): ``torch.backends.cudnn.benchmark``. Defaults to True.
        parity (bool): Check ours against HF (fp32, random weights) first. Defaults to True.
        profile (int): After every row is timed, profile this many steps of each under ``torch.profiler``
            (GPU busy time against wall, top kernels and host ops); 0: no profile. Defaults to 0.
        device (str, optional): Defaults to None: 'cuda' if available, else 'cpu'.
    """

    impls: tuple[str, ...] = ('ours', 'hf')
    archs: tuple[str, ...] = ('tiny', 'base')
    inputs: tuple[int, ...] = (512, 224)
    modes: tuple[str, ...] = MODES
    batch: int | None = None
    dtype: str = 'bf16'
    channels_last: bool = True
    warmup: int = 10
    compile_warmup: int = 20
    iters: int = 30
    compile_mode: str | None = None
    cudnn_benchmark: bool = True
    parity: bool = True
    profile: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        for name, given, allowed in (('impls', self.impls, IMPLS), ('archs', self.archs, tuple(ARCHS)),
                                     ('modes', self.modes, MODES), ('dtype', (self.dtype,), tuple(DTYPES))):
            if not given or set(given) - set(allowed):
                raise ValueError(f'{name} must be among {allowed}, got {given!r}')
        if min(self.inputs, default=0) < 32 or min(self.iters, self.warmup, self.compile_warmup) < 1:
            raise ValueError('inputs must be >= 32 and iters, warmup, compile_warmup >= 1, got '
                             f'{self.inputs}, {self.iters}, {self.warmup}, {self.compile_warmup}')
        if self.batch is not None and self.batch < 1:
            raise ValueError(f'batch must be positive, got {self.batch}')
        if self.profile < 0:
            raise ValueError(f'profile must be >= 0, got {self.profile}')


# ---------------------------------------------------------------------------------------- backbone mode
@contextmanager
def _fp32_convolutions() -> Iterator[None]:
    """Turn cuDNN's TF32 off for the parity check (matmuls are fp32 by default already)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No 'Writing model shards' progress bar in the middle of the table."""
    from transformers.utils import logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


@torch.no_grad()
def parity_error(arch: str, device: torch.device, channels_last: bool = True, seed: int = 0) -> float:
    """Max relative error of our four stage outputs against HF's, with the same random non-zero weights.

    The HF model is randomised (GRN included), saved with ``save_pretrained`` and read back with
    ``ConvNeXtV2.from_pretrained``, then both run in fp32 on a small input on ``device``.
    """
    gen = torch.Generator().manual_seed(seed)
    hf = HFBackbone(arch).eval()
    for param in hf.parameters():
        param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    with tempfile.TemporaryDirectory() as folder, _quiet_transformers():
        hf.hf.save_pretrained(folder)
        ours = ConvNeXtV2.from_pretrained(folder, out_features=list(INDEXED_STAGES)).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(PARITY_INPUT, generator=gen).to(device, memory_format=fmt)
    hf, ours = hf.to(device, memory_format=fmt), ours.to(device, memory_format=fmt)
    with _fp32_convolutions():
        pairs = list(zip(ours(x), hf(x), strict=True))
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in pairs)


def _backbone_step(model: nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype) -> Callable[[], None]:
    def autocast():
        return torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            outs = model(x)
        sum(out.float().mean() for out in outs).backward()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(x)
    return train if mode == 'train' else infer


def _row_step(row: Row, s: BackboneSettings, device: torch.device) -> Callable[[], None]:
    """A fresh model of ``row`` (seeded, compiled for a ``-compile`` row) and its step on random input."""
    torch.manual_seed(0)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    model = build_backbone(row.impl, row.arch).to(device, memory_format=fmt).train(row.mode == 'train')
    if row.impl.endswith('-compile'):
        torch._dynamo.reset()  # fresh graphs: no recompiles, no dynamic shapes from an earlier row
        model = torch.compile(model, mode=s.compile_mode, dynamic=False)
    x = torch.randn(row.batch, 3, row.input, row.input, device=device).contiguous(memory_format=fmt)
    return _backbone_step(model, x, row.mode, DTYPES[s.dtype])


def _warmup(row: Row, s: BackboneSettings) -> int:
    """Untimed steps before a row's timing or profile (compiled rows: the compiler's warm-up)."""
    return s.compile_warmup if row.impl.endswith('-compile') else s.warmup


def _measure_backbone_row(row: Row, s: BackboneSettings, device: torch.device) -> None:
    record(row, measure(_row_step(row, s, device), _warmup(row, s), s.iters, device))


def _profile_backbone_row(row: Row, s: BackboneSettings, device: torch.device) -> None:
    """``row.extra['profile']``: :data:`BackboneSettings.profile` steps of a fresh model of ``row`` under
    ``torch.profiler``, after its warm-up (so a compiled row profiles its compiled graphs, not the compiler)."""
    row.extra['profile'] = profile_step(_row_step(row, s, device), s.profile, device, warmup=_warmup(row, s))


def backbone_benchmark(s: BackboneSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check parity with HF, then time every (arch, input, mode, impl); one row each, failures included."""
    device = resolve_device(s.device)
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    parity: dict[str, float | str] = {}
    for arch in s.archs:
        if not s.parity:
            parity[arch] = 'skipped'
        elif not installed('hf'):
            parity[arch] = 'skipped: transformers not installed'
        else:
            try:
                parity[arch] = parity_error(arch, device, s.channels_last)
            except Exception as err:  # a check that cannot run is a failed check, but the table still comes
                parity[arch] = status_of(err)
            log(f'parity {arch}: {parity[arch]}')
    rows = []
    for arch in s.archs:
        for size in s.inputs:
            for mode in s.modes:
                for impl in s.impls:
                    row = Row(impl, arch, size, s.batch or default_batch(arch, size), mode)
                    if not installed(impl):
                        row.status = 'not installed'
                    else:
                        try:
                            _measure_backbone_row(row, s, device)
                        except Exception as err:  # one failed row must not lose the others
                            row.status = status_of(err)
                        free_memory(device)
                    log(f'{impl:>12} {arch} {size} b{row.batch} {mode}: '
                        + (f'{row.img_per_s:.1f} img/s' if row.status == 'ok' else row.status))
                    rows.append(row)
    # Profiles after every timing: once the profiler has run, kernel launches in the process stay slower.
    for row in rows if s.profile else ():
        if row.status == 'ok':
            try:
                _profile_backbone_row(row, s, device)
            except Exception as err:  # the timing stands without its profile
                row.extra['profile_status'] = status_of(err)
            free_memory(device)
            log(f'profiled {row.impl} {row.arch} {row.input} {row.mode}')
    return dict(kind='backbone', env=environment(device), settings=asdict(s), parity=parity,
                rows=[asdict(row) for row in rows])


# ------------------------------------------------------------------------------------------------ table
def format_backbone_report(report: dict[str, Any]) -> str:
    """Markdown: the header (device, versions, settings, parity), then one table row per row of ``report``."""
    s = report['settings']
    parity = '; '.join(f'{arch} {err:.2e}{" FAILED" if err > PARITY_TOL else ""}' if isinstance(err, float)
                       else f'{arch} {err}' for arch, err in report['parity'].items())
    lines = format_header(report['env']) + [
        f'settings: {s["dtype"]} autocast, {"channels_last" if s["channels_last"] else "NCHW"}, all four stage '
        f'outputs, train = forward + backward of the sum of output means, warm-up {s["warmup"]} (compiled '
        f'{s["compile_warmup"]}, mode {s["compile_mode"] or "default"}), {s["iters"]} timed iterations, '
        f'start-up objects frozen out of the garbage collector (as GcFreezeHook does in training)'
        + (f', cudnn.benchmark {s["cudnn_benchmark"]}' if report['env']['device_type'] == 'cuda' else ''),
        f'parity ours vs HF (fp32, random weights, input {"x".join(map(str, PARITY_INPUT))}, max relative '
        f'error over the four stages, tolerance {PARITY_TOL:g}): {parity}',
        '',
        '| impl | arch | input | batch | mode | img/s | ms/iter | median ms | max ms | gc ms '
        '| peak mem (GiB) | 1st iter (s) | status |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in report['rows']:
        lines.append(f'| {r["impl"]} | {r["arch"]} | {r["input"]} | {r["batch"]} | {r["mode"]} | '
                     f'{fmt_num(r["img_per_s"], ".1f")} | {fmt_num(r["ms_per_iter"], ".2f")} | '
                     f'{fmt_num(r["ms_median"], ".2f")} | {fmt_num(r["ms_max"], ".2f")} | '
                     f'{fmt_num(r["gc_ms"], ".1f")} | {fmt_gib(r["peak_mem_bytes"])} | '
                     f'{fmt_num(r["first_iter_s"], ".1f")} | {r["status"]} |')
    for r in report['rows']:
        title = f'{r["impl"]} {r["arch"]} {r["input"]} x{r["batch"]} {r["mode"]}'
        if 'profile' in r['extra']:
            lines += ['', *format_profile(title, r['extra']['profile'])]
        elif 'profile_status' in r['extra']:
            lines += ['', f'profile of {title}: {r["extra"]["profile_status"]}']
    return '\n'.join(lines)


def parity_failed(report: dict[str, Any]) -> bool:
    """Whether any arch's parity error exceeds :data:`PARITY_TOL` or the check failed to run."""
    return any(not err <= PARITY_TOL if isinstance(err, float) else err.startswith(('error', 'OOM'))
               for err in report.get('parity', {}).values())
