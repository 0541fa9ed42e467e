"""Maintainer probe (not a user tool): the backbone's training step under each setting of the block's switches
and thresholds, repeated and interleaved in one process, on a GPU: the evidence for changing an eager default.

    python dev/ab_block_paths.py [--arch base] [--input 512] [--batch 16] [--repeats 2] [--json-out FILE]
    python dev/ab_block_paths.py --cpu-smoke        # this script, checked on the CPU on a tiny shape

A variant sets module attributes (:data:`VARIANTS`: ``fused.NORM_IN_BF16``, ``layers.MIN_PIXELS_WRITTEN_OUT``,
``fused.MIN_IMAGES_APPLIED``) for its runs and restores them after. The variants run in turn, ``--repeats``
times over, so a drift of the card's clock spreads over all of them. Per variant: the median over the runs of
each run's median step, the mean and the slowest step, the garbage collector's time, the ratio to HF's median
(one HF run first, where transformers is installed), and the bf16 error of the four outputs and of the input
gradient against fp32 (random non-zero weights, GRN's included).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator
from unittest import mock

DEV = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(DEV)
for folder in (REPO_ROOT, DEV):  # the checkout's package, installed or not; check_fused beside this file
    if folder not in sys.path:
        sys.path.insert(0, folder)

import torch  # noqa: E402

from convnextv2_dense.bench.backbone import BackboneSettings, backbone_benchmark  # noqa: E402
from convnextv2_dense.bench.impls import build_backbone, installed  # noqa: E402
from convnextv2_dense.models import fused, layers  # noqa: E402
from check_fused import rel  # noqa: E402

MODULES = {'fused': fused, 'layers': layers}
VARIANTS: dict[str, dict[str, object]] = {
    'as shipped': {},
    'LN bf16': {'fused.NORM_IN_BF16': True},
    'GRN written out at any size': {'layers.MIN_PIXELS_WRITTEN_OUT': 0},
    'LN bf16 + GRN written out': {'fused.NORM_IN_BF16': True, 'layers.MIN_PIXELS_WRITTEN_OUT': 0},
    'fused applied from 16 images': {'fused.MIN_IMAGES_APPLIED': 16},
    'LN bf16 + fused applied from 16': {'fused.NORM_IN_BF16': True, 'fused.MIN_IMAGES_APPLIED': 16},
}


@contextlib.contextmanager
def overridden(settings: dict[str, object]) -> Iterator[None]:
    """``settings`` ('module.NAME': value, module in :data:`MODULES`) in force inside the ``with``, restored after."""
    with contextlib.ExitStack() as stack:
        for key, value in settings.items():
            module_name, name = key.split('.')
            module = MODULES[module_name]
            if not hasattr(module, name):
                raise AttributeError(f'{key}: {module.__name__} has no {name}')
            stack.enter_context(mock.patch.object(module, name, value))
        yield


def bf16_errors(arch: str, size: int, batch: int, device: torch.device) -> dict[str, float]:
    """The four outputs' and the input gradient's worst relative error, bf16 autocast against fp32, for the
    current settings (random weights, GRN's gamma and beta non-zero)."""
    torch.manual_seed(0)
    model = build_backbone('ours', arch).to(device).to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'grn' in name:
                p.normal_(0, 0.5)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def run(dtype: torch.dtype | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        xx = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outs = model(xx)
        weights = [torch.linspace(-1, 1, o.numel(), device=device).view_as(o) for o in outs]
        loss = sum((o.float() * w).sum() for o, w in zip(outs, weights))
        grad, = torch.autograd.grad(loss, xx)
        return [o.float() for o in outs], grad

    ref_outs, ref_grad = run(None)
    outs, grad = run(torch.bfloat16)
    return dict(out_err=max(rel(a, b) for a, b in zip(outs, ref_outs)),
                dx_err=rel(grad, ref_grad))


def timed(impl: str, arch: str, size: int, batch: int, warmup: int, iters: int, device: str) -> dict:
    report = backbone_benchmark(BackboneSettings(impls=(impl,), archs=(arch,), inputs=(size,), modes=('train',),
                                                 batch=batch, parity=False, warmup=warmup, iters=iters,
                                                 device=device), log=lambda line: None)
    row = report['rows'][0]
    if row['status'] != 'ok':
        raise RuntimeError(f'{impl} {arch} {size} x{batch}: {row["status"]}')
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='base')
    parser.add_argument('--input', type=int, default=512)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=8)
    parser.add_argument('--iters', type=int, default=25)
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--json-out')
    parser.add_argument('--cpu-smoke', action='store_true', help='check this script on the CPU on a tiny shape')
    args = parser.parse_args()
    if args.cpu_smoke:
        args.arch, args.input, args.batch, args.repeats, args.warmup, args.iters = 'atto', 64, 1, 1, 1, 1
        args.variants = args.variants[:2]
    elif not torch.cuda.is_available():
        raise SystemExit('error: this probe needs a CUDA GPU (or --cpu-smoke)')
    device = 'cpu' if args.cpu_smoke else 'cuda'
    name = torch.cuda.get_device_name() if device == 'cuda' else 'cpu (smoke)'
    print(f'{args.arch} {args.input} x{args.batch} training, bf16 autocast, channels-last, {name}, torch '
          f'{torch.__version__}; {args.repeats} run(s) per variant of {args.iters} timed steps', flush=True)
    hf = timed('hf', args.arch, args.input, args.batch, args.warmup, args.iters, device) if installed('hf') else None
    if hf:
        print(f'hf: median {hf["ms_median"]:.2f} ms, mean {hf["ms_per_iter"]:.2f}, max {hf["ms_max"]:.1f}',
              flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for variant in args.variants:
            with overridden(VARIANTS[variant]):
                row = timed('ours', args.arch, args.input, args.batch, args.warmup, args.iters, device)
            runs[variant].append(row)
            print(f'  run {rep + 1} {variant}: median {row["ms_median"]:.2f} ms, mean {row["ms_per_iter"]:.2f}, '
                  f'max {row["ms_max"]:.1f}, gc {row["gc_ms"]:.1f}', flush=True)
    print('\n| variant | median ms | mean ms | max ms | gc ms | x HF (median) | bf16 out err | bf16 dx err |\n'
          '|---|---|---|---|---|---|---|---|')
    results = []
    for variant in args.variants:
        rows = runs[variant]
        with overridden(VARIANTS[variant]):
            errors = bf16_errors(args.arch, 128 if device == 'cuda' else 32, 2, torch.device(device))
        median = statistics.median(r['ms_median'] for r in rows)
        result = dict(variant=variant, settings=VARIANTS[variant], ms_median=median,
                      ms_mean=statistics.mean(r['ms_per_iter'] for r in rows), ms_max=max(r['ms_max'] for r in rows),
                      gc_ms=max(r['gc_ms'] for r in rows), vs_hf=hf['ms_median'] / median if hf else None,
                      runs=[r['ms_median'] for r in rows], **errors)
        results.append(result)
        ratio = f'{result["vs_hf"]:.2f}x' if hf else '-'
        print(f'| {variant} | {median:.2f} | {result["ms_mean"]:.2f} | {result["ms_max"]:.1f} | '
              f'{result["gc_ms"]:.1f} | {ratio} | {errors["out_err"]:.1e} | {errors["dx_err"]:.1e} |', flush=True)
    if args.json_out:
        with open(args.json_out, 'w') as f:
            json.dump(dict(device=name, torch=torch.__version__, arch=args.arch, input=args.input, batch=args.batch,
                           hf=hf, results=results), f, indent=2)
    return 0 if all(r['out_err'] < 2e-2 and r['dx_err'] < 2e-2 for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
