"""Maintainer check of the Triton depthwise 7x7 kernels on a GPU (convnextv2_dense.models.fused.dwconv).

For the stage shapes of the benchmarked settings: errors against cuDNN in fp32 (TF32 off) for the output,
the fused LayerNorm output and the three gradients, then times (CUDA events, median of 20 after 5 warm-ups)
of cuDNN's convolution (+ LayerNorm) against the kernels, forward (inference), forward+LayerNorm and
backward. Optionally a kernel profile of a compiled backbone (``--profile IMPL``).

    python dev/check_dwconv.py [--dtype bf16] [--profile timm-compile ours-compile] [--json-out FILE]
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
from convnextv2_dense.models.fused import dwconv  # noqa: E402

# (channels, map side, images): the four stages of tiny 512 x32, base 512 x16, base 224 x128, base 512 x2.
SHAPES = ((96, 128, 32), (192, 64, 32), (384, 32, 32), (768, 16, 32),
          (128, 128, 16), (256, 64, 16), (512, 32, 16), (1024, 16, 16),
          (128, 56, 128), (256, 28, 128), (512, 14, 128), (1024, 7, 128),
          (128, 128, 2), (512, 32, 2))
ROW_CONFIGS = ((4, 8, 64, 4), (4, 16, 32, 4), (8, 8, 32, 4), (2, 16, 64, 4), (4, 8, 128, 8))  # (h, w, c, warps)
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
    dy = torch.randn(n, c, hw, hw, device='cuda', generator=g).to(dtype, memory_format=torch.channels_last)
    return x, w, b, nw, nb, dy


def numerics(c: int, hw: int, n: int) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = False
    x32, w, b, nw, nb, dy32 = inputs(c, hw, n, torch.float32)
    x32.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    ref = F.conv2d(x32, w, b, padding=3, groups=c)
    ref_norm = F.layer_norm(ref.detach().permute(0, 2, 3, 1), (c,), nw, nb, 1e-6)
    ref_grads = torch.autograd.grad(ref, [x32, w, b], dy32)
    rows = []
    for name, dtype in DTYPES.items():
        x = x32.detach().to(dtype).requires_grad_()
        y = dwconv.depthwise7x7(x, w, b)
        grads = torch.autograd.grad(y, [x, w, b], dy32.to(dtype))
        z = dwconv.depthwise7x7_norm(x.detach(), w, b, nw, nb, 1e-6)
        rows.append(dict(shape=f'C{c} {hw}x{hw} N{n}', dtype=name, out=rel(y, ref), norm=rel(z, ref_norm),
                         dx=rel(grads[0], ref_grads[0]), dw=rel(grads[1], ref_grads[1]), db=rel(grads[2], ref_grads[2])))
    return rows


def timing(c: int, hw: int, n: int, dtype: torch.dtype) -> dict:
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    x, w, b, nw, nb, dy = inputs(c, hw, n, dtype)
    wd, bd = w.to(dtype).to(memory_format=torch.channels_last), b.to(dtype)
    xg, wg, bg = x.clone().requires_grad_(), wd.clone().requires_grad_(), bd.clone().requires_grad_()
    y_cudnn = F.conv2d(xg, wg, bg, padding=3, groups=c)
    xt, wt, bt = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y_triton = dwconv.depthwise7x7(xt, wt, bt)
    nwd, nbd = nw.to(dtype), nb.to(dtype)
    with torch.no_grad():
        row = dict(
            shape=f'C{c} {hw}x{hw} N{n}',
            cudnn_fwd=median_ms(lambda: F.conv2d(x, wd, bd, padding=3, groups=c)),
            triton_fwd=median_ms(lambda: dwconv.depthwise7x7(x, w, b)),
            cudnn_fwd_norm=median_ms(lambda: F.layer_norm(F.conv2d(x, wd, bd, padding=3, groups=c).permute(0, 2, 3, 1),
                                                          (c,), nwd, nbd, 1e-6)),
            triton_fwd_norm=median_ms(lambda: dwconv.depthwise7x7_norm(x, w, b, nw, nb, 1e-6)))
    row['cudnn_bwd'] = median_ms(lambda: torch.autograd.grad(y_cudnn, [xg, wg, bg], dy, retain_graph=True))
    row['triton_bwd'] = median_ms(lambda: torch.autograd.grad(y_triton, [xt, wt, bt], dy, retain_graph=True))
    xh, dyh = dwconv._nhwc(x), dwconv._nhwc(dy)
    row['triton_dgrad'] = median_ms(lambda: dwconv._launch_conv(dyh, dwconv._taps(w), None, dtype))
    row['triton_wgrad'] = median_ms(lambda: dwconv._weight_grad(xh, dyh))
    row['bytes_fwd_gb'] = 2 * x.numel() * x.element_size() / 1e9
    taps = dwconv._taps(w)
    for cfg in ROW_CONFIGS:
        row[f'rows{cfg}'] = median_ms(lambda: dwconv._launch_rows(xh, taps, b, dtype, *cfg))
    return row


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
    report = dict(device=torch.cuda.get_device_name(), numerics=[])
    print('| map | dtype | out | norm out | dx | dw | db | s |\n|---|---|---|---|---|---|---|---|', flush=True)
    for s in SHAPES[::3]:
        start = time.perf_counter()
        rows = numerics(*s)
        seconds = time.perf_counter() - start
        report['numerics'] += rows
        for r in rows:
            print(f'| {r["shape"]} | {r["dtype"]} | {r["out"]:.1e} | {r["norm"]:.1e} | {r["dx"]:.1e} | {r["dw"]:.1e} '
                  f'| {r["db"]:.1e} | {seconds:.1f} |', flush=True)
    report['timing'] = []
    print(f'\n{args.dtype}, ms | cuDNN fwd | Triton fwd | cuDNN fwd+LN | Triton fwd+LN | cuDNN bwd | Triton bwd '
          '(dgrad, wgrad) | fwd GB/s Triton\n|---|---|---|---|---|---|---|---|')
    for s in SHAPES:
        r = timing(*s, DTYPES[args.dtype])
        report['timing'].append(r)
        print(f'| {r["shape"]} | {r["cudnn_fwd"]:.3f} | {r["triton_fwd"]:.3f} | {r["cudnn_fwd_norm"]:.3f} | '
              f'{r["triton_fwd_norm"]:.3f} | {r["cudnn_bwd"]:.3f} | {r["triton_bwd"]:.3f} ({r["triton_dgrad"]:.3f}, '
              f'{r["triton_wgrad"]:.3f}) | {r["bytes_fwd_gb"] / r["triton_fwd"] * 1e3:.0f} |', flush=True)
        print('    row-block fwd: ' + ', '.join(f'{cfg} {r[f"rows{cfg}"]:.3f}' for cfg in ROW_CONFIGS), flush=True)
    for impl in args.profile:
        for train in (False, True):
            print('\n' + profile(impl, 'tiny', 512, 32, train), flush=True)
    if args.json_out:
        with open(args.json_out, 'w') as f:
            json.dump(report, f, indent=2)
    worst = max(max(r['out'], r['norm'], r['dx'], r['dw'], r['db']) for r in report['numerics'])
    return 0 if worst < 1e-2 else 1


if __name__ == '__main__':
    sys.exit(main())
