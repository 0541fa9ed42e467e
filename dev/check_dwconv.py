"""Maintainer check of the Triton depthwise 7x7 convolution with its LayerNorm on a GPU
(convnextv2_dense.models.fused.dwconv, inference only).

For the stage shapes of the benchmarked settings that the pass takes (at most 256 channels): its error
against cuDNN's convolution and the LayerNorm in fp32 (TF32 off) and in half precision, then times (CUDA
events, median of 20 after 5 warm-ups) of cuDNN's convolution + LayerNorm against the pass, and the rule
``fused.use_triton_conv`` applies by default. Optionally a kernel profile of a backbone (``--profile IMPL``).

    python dev/check_dwconv.py [--dtype bf16] [--profile timm-compile ours] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from convnextv2_dense.bench.timing import measure  # noqa: E402
from convnextv2_dense.models import fused  # noqa: E402
from convnextv2_dense.models.fused import dwconv  # noqa: E402

# (channels, map side, images): the stages up to 256 channels of tiny 512 x32, base 512 x16, base 224 x128,
# and base 512 x2 (the segmentation configs' batch)
SHAPES = ((96, 128, 32), (192, 64, 32), (128, 128, 16), (256, 64, 16), (128, 56, 128), (256, 28, 128),
          (128, 128, 2), (256, 64, 2))
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def median_ms(fn) -> float:
    """Median CUDA-event time of ``fn`` over 20 calls after 5 warm-ups (the benchmark's own timer)."""
    return measure(fn, warmup=5, iters=20, device=torch.device('cuda'))['ms_median']


def inputs(c: int, hw: int, n: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device='cuda').manual_seed(seed)
    x = torch.randn(n, c, hw, hw, device='cuda', generator=g).to(dtype, memory_format=torch.channels_last)
    w = torch.randn(c, 1, 7, 7, device='cuda', generator=g) * 0.1
    b, nw, nb = (torch.randn(c, device='cuda', generator=g) for _ in range(3))
    return x, w, b, nw, nb


def cudnn_conv_norm(x, w, b, nw, nb):
    c = x.shape[1]
    return F.layer_norm(F.conv2d(x, w.to(x.dtype), b.to(x.dtype), padding=3, groups=c).permute(0, 2, 3, 1), (c,),
                        nw.to(x.dtype), nb.to(x.dtype), 1e-6)


def numerics(c: int, hw: int, n: int) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = False
    x32, w, b, nw, nb = inputs(c, hw, n, torch.float32)
    ref = cudnn_conv_norm(x32, w, b, nw, nb)
    rows = []
    for name, dtype in DTYPES.items():
        got = dwconv.depthwise7x7_norm(x32.to(dtype), w, b, nw, nb, 1e-6)
        rows.append(dict(shape=f'C{c} {hw}x{hw} N{n}', dtype=name, out=rel(got, ref),
                         cudnn=rel(cudnn_conv_norm(x32.to(dtype), w, b, nw, nb), ref)))
    return rows


def timing(c: int, hw: int, n: int, dtype: torch.dtype) -> dict:
    torch.backends.cudnn.allow_tf32 = True
    x, w, b, nw, nb = inputs(c, hw, n, dtype)
    cudnn = median_ms(lambda: cudnn_conv_norm(x, w, b, nw, nb))
    triton = median_ms(lambda: dwconv.depthwise7x7_norm(x, w, b, nw, nb, 1e-6))
    bytes_gb = 2 * x.numel() * x.element_size() / 1e9  # one read, one write
    default = fused.use_triton_conv(None, x)
    return dict(shape=f'C{c} {hw}x{hw} N{n}', cudnn_ms=cudnn, triton_ms=triton, speedup=cudnn / triton,
                gb_per_s=bytes_gb / triton * 1e3, default=default)


def profile(impl: str, arch: str, size: int, batch: int, train: bool) -> str:
    from convnextv2_dense.bench.impls import build_backbone
    model = build_backbone(impl, arch).cuda().to(memory_format=torch.channels_last).train(train)
    if impl.endswith('-compile'):
        model = torch.compile(model)
    x = torch.randn(batch, 3, size, size, device='cuda').to(memory_format=torch.channels_last)

    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16), torch.set_grad_enabled(train):
            outs = model(x)
            if train:
                sum(o.float().mean() for o in outs).backward()
    for _ in range(15):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by='cuda_time_total', row_limit=18, max_name_column_width=70)
    return f'profile {impl} {arch} {size} x{batch} {"train" if train else "infer"} (3 steps)\n{table}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dtype', default='bf16', choices=DTYPES)
    parser.add_argument('--profile', nargs='*', default=[], help='backbone impls to profile (tiny 512 x32)')
    parser.add_argument('--json-out')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('error: this check needs a CUDA GPU')
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}', flush=True)
    # Each row is printed as soon as it is measured, with the seconds it took (the first rows include Triton's
    # compiles), so a run stopped by a time limit still reports how far it got.
    report = dict(device=torch.cuda.get_device_name(), numerics=[], timing=[])
    print('| map | dtype | Triton err | cuDNN + LayerNorm err (same dtype) | s |\n|---|---|---|---|---|', flush=True)
    for s in SHAPES[::2]:
        start = time.perf_counter()
        rows = numerics(*s)
        seconds = time.perf_counter() - start
        report['numerics'] += rows
        for r in rows:
            print(f'| {r["shape"]} | {r["dtype"]} | {r["out"]:.1e} | {r["cudnn"]:.1e} | {seconds:.1f} |', flush=True)
    print(f'\n{args.dtype}, ms | cuDNN conv + LayerNorm | Triton pass | speed-up | GB/s | taken by default '
          '|\n|---|---|---|---|---|---|')
    for s in SHAPES:
        r = timing(*s, DTYPES[args.dtype])
        report['timing'].append(r)
        print(f'| {r["shape"]} | {r["cudnn_ms"]:.3f} | {r["triton_ms"]:.3f} | {r["speedup"]:.2f}x | '
              f'{r["gb_per_s"]:.0f} | {"yes" if r["default"] else "no"} |', flush=True)
    for impl in args.profile:
        for train in (False, True):
            print('\n' + profile(impl, 'tiny', 512, 32, train), flush=True)
    if args.json_out:
        with open(args.json_out, 'w') as f:
            json.dump(report, f, indent=2)
    worst = max(r['out'] for r in report['numerics'])
    return 0 if worst < 1e-2 else 1


if __name__ == '__main__':
    sys.exit(main())
