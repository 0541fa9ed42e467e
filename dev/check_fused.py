"""Maintainer check of the fused ConvNeXt V2 block on a GPU: numerics against the plain block, then speed.

For block shapes of the real models (width, feature map, batch) and each dtype, the fused block and the plain
block run forward + backward on the same random input and random non-zero weights; errors are
``||out - ref|| / ||ref||`` against the plain block in fp32 (TF32 off), for the output, the input gradient
and every parameter gradient (the worst one is shown). The plain block in bf16/fp16 is shown next to the
fused one: both should land near 1e-3 and under the 1e-2 target. ``fused_block=True`` folds GRN into the
second Linear where ``worth_fusing`` and applies it in a Triton pass elsewhere (the form is shown), and runs
the depthwise convolution as Triton kernels. Then the kernels alone against their torch reference, and
block times (CUDA events, median of 20 after 5 warm-ups), fwd+bwd: plain, fused with cuDNN's convolution,
fused with the Triton convolution, and that with the applied form as the two Triton matmuls
(``fused.APPLIED_IN_MATMULS``); inference (no grad): plain, fused, fused with the matmuls. Rows print as
they are measured, and ``--json-out`` is rewritten after every shape.

    python dev/check_fused.py [--json-out FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from convnextv2_dense.bench.timing import measure  # noqa: E402
from convnextv2_dense.models import fused as fused_module  # noqa: E402
from convnextv2_dense.models.block import Block  # noqa: E402
from convnextv2_dense.models.fused import TorchOps, kernel_ops, worth_fusing  # noqa: E402

SHAPES = ((128, 128, 2), (256, 64, 2), (512, 32, 2), (1024, 16, 2), (96, 128, 32), (512, 32, 16), (1024, 7, 128))
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def run_block(block: Block, x: torch.Tensor, g: torch.Tensor, dtype: torch.dtype, fused: bool):
    block.fused_block = True if fused else False
    x = x.detach().requires_grad_()
    with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        y = block(x)
    grads = torch.autograd.grad(y, [x, *block.parameters()], g.to(y.dtype))
    return y.float(), [t.float() for t in grads]


@contextlib.contextmanager
def variant(triton_conv: bool = True, in_matmuls: bool = False):
    """``fused_block=True`` with cuDNN's convolution (``triton_conv=False``; True takes the Triton one) and the
    applied GRN form as cuBLAS matmuls with passes, or (``in_matmuls``) as the two Triton matmuls."""
    with contextlib.ExitStack() as stack:
        if not triton_conv:
            stack.enter_context(mock.patch.object(fused_module, 'use_triton_conv', lambda *args: False))
        stack.enter_context(mock.patch.object(fused_module, 'APPLIED_IN_MATMULS', in_matmuls))
        yield


def form(c: int, hw: int, n: int) -> str:
    return 'folded' if worth_fusing(torch.empty(n, c, hw, hw, device='meta')) else 'applied'


def numerics(c: int, hw: int, n: int) -> list[dict]:
    torch.manual_seed(c + hw + n)
    block = Block(c).cuda().to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5 if p.dim() == 1 else 0.05)
    x = torch.randn(n, c, hw, hw, device='cuda').to(memory_format=torch.channels_last)
    g = torch.randn(n, c, hw, hw, device='cuda').to(memory_format=torch.channels_last)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref_y, ref_g = run_block(block, x, g, torch.float32, fused=False)
    rows = []
    impls = [('plain', False, False), (f'fused ({form(c, hw, n)})', True, False)]
    if form(c, hw, n) == 'applied':
        impls.append(('fused (applied, matmuls)', True, True))
    for name, dtype in DTYPES.items():
        for impl, fused, in_matmuls in impls if dtype != torch.float32 else impls[1:]:
            with variant(in_matmuls=in_matmuls):
                y, grads = run_block(block, x, g, dtype, fused)
            rows.append(dict(shape=f'C{c} {hw}x{hw} N{n}', dtype=name, impl=impl,
                             out=rel(y, ref_y), dx=rel(grads[0], ref_g[0]),
                             dparams=max(rel(a, b) for a, b in zip(grads[1:], ref_g[1:]))))
    return rows


def kernels(c: int, hw: int, n: int) -> list[dict]:
    rows = []
    for name, dtype in DTYPES.items():
        h = torch.randn(n, hw * hw, 4 * c, device='cuda', dtype=dtype) * 2
        a0, s0 = TorchOps.gelu_sumsq(h)
        a1, s1 = kernel_ops().gelu_sumsq(h)
        da, r = torch.randn_like(h), torch.randn(n, 4 * c, device='cuda')
        d0, d1 = TorchOps.gelu_grad(h, a0, da, r), kernel_ops().gelu_grad(h, a1, da, r)
        s, beta = torch.rand(n, 4 * c, device='cuda') + 0.5, torch.randn(4 * c, device='cuda')
        applied = dict(g=rel(kernel_ops().gelu_grn(h, s, beta), TorchOps.gelu_grn(h, s, beta)),
                       sums=max(rel(x1, x0) for x1, x0 in zip(kernel_ops().grn_grad_sums(h, da),
                                                                TorchOps.grn_grad_sums(h, da))),
                       dh_applied=rel(kernel_ops().gelu_grn_grad(h, da, s, r), TorchOps.gelu_grn_grad(h, da, s, r)))
        rows.append(dict(shape=f'K{4 * c} L{hw * hw} N{n}', dtype=name, a=rel(a1, a0), sumsq=rel(s1, s0),
                         dh=rel(d1, d0), **applied))
    return rows


# (column, fused_block, Triton convolution, applied form in the Triton matmuls, training)
VARIANTS = (('plain', False, False, False, True), ('fused', True, False, False, True),
            ('fused_conv', True, True, False, True), ('matmuls', True, True, True, True),
            ('infer_plain', False, False, False, False), ('infer_fused', True, True, False, False),
            ('infer_matmuls', True, True, True, False))


def timing(c: int, hw: int, n: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    torch.manual_seed(0)
    block = Block(c).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(n, c, hw, hw, device='cuda').to(memory_format=torch.channels_last).requires_grad_()
    out = {}
    for column, fused, triton_conv, in_matmuls, training in VARIANTS:
        if in_matmuls and form(c, hw, n) == 'folded':
            continue  # the matmul form is the applied one's alternative
        block.fused_block = fused
        block.train(training)

        def step():
            with torch.autocast('cuda', dtype=dtype), torch.set_grad_enabled(training):
                y = block(x)
            if training:
                y.float().sum().backward()
        with variant(triton_conv, in_matmuls):
            out[column] = measure(step, warmup=5, iters=20, device=torch.device('cuda'))['ms_median']
    return dict(shape=f'C{c} {hw}x{hw} N{n}', form=form(c, hw, n), **{f'{k}_ms': v for k, v in out.items()})


def ms_and_speedup(row: dict, column: str, base: str) -> str:
    if f'{column}_ms' not in row:
        return 'n/a | n/a'
    return f'{row[f"{column}_ms"]:.3f} | {row[f"{base}_ms"] / row[f"{column}_ms"]:.2f}x'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json-out')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('error: this check needs a CUDA GPU')
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, numerics=[], kernels=[], timing=[])

    def save():  # after every shape, so a run stopped by a time limit keeps what it measured
        if args.json_out:
            with open(args.json_out, 'w') as f:
                json.dump(report, f, indent=2)
    print(f'device: {report["device"]}, torch {report["torch"]}\n', flush=True)
    print('| block | dtype | impl | out err | dx err | worst param grad err |\n|---|---|---|---|---|---|', flush=True)
    for shape in SHAPES:
        for r in numerics(*shape):
            report['numerics'].append(r)
            print(f'| {r["shape"]} | {r["dtype"]} | {r["impl"]} | {r["out"]:.1e} | {r["dx"]:.1e} | '
                  f'{r["dparams"]:.1e} |', flush=True)
        save()
    print('\n| kernel input | dtype | gelu err | sumsq err | dh err | applied: g err | sums err | dh err |\n'
          '|---|---|---|---|---|---|---|---|', flush=True)
    for shape in SHAPES[:4]:
        for r in kernels(*shape):
            report['kernels'].append(r)
            print(f'| {r["shape"]} | {r["dtype"]} | {r["a"]:.1e} | {r["sumsq"]:.1e} | {r["dh"]:.1e} | {r["g"]:.1e} '
                  f'| {r["sums"]:.1e} | {r["dh_applied"]:.1e} |', flush=True)
        save()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print('\n| block (bf16 autocast) | GRN form | train: plain ms | fused, cuDNN conv | x | fused, Triton conv | x '
          '| + applied in matmuls | x | infer: plain ms | fused | x | + matmuls | x |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|', flush=True)
    for shape in SHAPES:
        r = timing(*shape)
        report['timing'].append(r)
        print(f'| {r["shape"]} | {r["form"]} | {r["plain_ms"]:.3f} | {ms_and_speedup(r, "fused", "plain")} | '
              f'{ms_and_speedup(r, "fused_conv", "plain")} | {ms_and_speedup(r, "matmuls", "plain")} | '
              f'{r["infer_plain_ms"]:.3f} | {ms_and_speedup(r, "infer_fused", "infer_plain")} | '
              f'{ms_and_speedup(r, "infer_matmuls", "infer_plain")} |', flush=True)
        save()
    worst = max(max(r['out'], r['dx'], r['dparams']) for r in report['numerics'] if r['impl'] != 'plain')
    return 0 if worst < 1e-2 else 1


if __name__ == '__main__':
    sys.exit(main())
