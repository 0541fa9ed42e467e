"""Maintainer check of the fused ConvNeXt V2 block on a GPU: numerics against the plain block, then speed.

For block shapes of the real models (width, feature map, batch) and each dtype, the fused block and the plain
block run forward + backward on the same random input and random non-zero weights; errors are
``||out - ref|| / ||ref||`` against the plain block in fp32 (TF32 off), for the output, the input gradient
and every parameter gradient (the worst one is shown). The plain block in bf16/fp16 is shown next to the
fused one: both should land near 1e-3 and under the 1e-2 target. The fused block runs the depthwise
convolution as Triton kernels and each MLP form in turn (GRN folded into the second Linear, applied by
Triton passes between cuBLAS's matmuls, applied in the two Triton matmuls). Then the kernels alone against
their torch reference, and block times (CUDA events, median of 20 after 5 warm-ups): plain, and each MLP
form forced (``fused.mlp_form``), training (fwd+bwd) and inference (no grad, the Triton convolution and
LayerNorm where they run; one column with cuDNN's), on every shape: the table that decides the rules. Rows
print as they are measured; ``--json-out`` is rewritten after every shape.

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
from convnextv2_dense.models.fused import TorchOps, kernel_ops  # noqa: E402

SHAPES = ((128, 128, 2), (256, 64, 2), (512, 32, 2), (1024, 16, 2), (96, 128, 32), (512, 32, 16), (1024, 7, 128))
DEVICE = 'cuda'
WARMUP, ITERS = 5, 20
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def run_block(block: Block, x: torch.Tensor, g: torch.Tensor, dtype: torch.dtype, fused: bool):
    block.fused_block = True if fused else False
    x = x.detach().requires_grad_()
    with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
        y = block(x)
    grads = torch.autograd.grad(y, [x, *block.parameters()], g.to(y.dtype))
    return y.float(), [t.float() for t in grads]


@contextlib.contextmanager
def variant(triton_conv: bool = True, mlp: str | None = None):
    """``fused_block=True`` with cuDNN's convolution (``triton_conv=False``; True takes the Triton one) and the
    MLP in the form ``mlp`` ('folded', 'applied' or 'matmuls'; None: the form ``fused.mlp_form`` picks)."""
    with contextlib.ExitStack() as stack:
        if not triton_conv:
            stack.enter_context(mock.patch.object(fused_module, 'use_triton_conv', lambda *args: False))
        if mlp is not None:
            stack.enter_context(mock.patch.object(fused_module, 'mlp_form', lambda x: mlp))
        yield


def form(c: int, hw: int, n: int) -> str:
    return fused_module.mlp_form(torch.empty(n, c, hw, hw, device='meta'))


def numerics(c: int, hw: int, n: int) -> list[dict]:
    torch.manual_seed(c + hw + n)
    block = Block(c).to(DEVICE).to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5 if p.dim() == 1 else 0.05)
    x = torch.randn(n, c, hw, hw, device=DEVICE).to(memory_format=torch.channels_last)
    g = torch.randn(n, c, hw, hw, device=DEVICE).to(memory_format=torch.channels_last)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref_y, ref_g = run_block(block, x, g, torch.float32, fused=False)
    rows = []
    impls = [('plain', False, None)] + [(f'fused ({mlp})', True, mlp) for mlp in ('folded', 'applied', 'matmuls')]
    for name, dtype in DTYPES.items():
        for impl, fused, mlp in impls if dtype != torch.float32 else impls[1:]:
            with variant(mlp=mlp):
                y, grads = run_block(block, x, g, dtype, fused)
            rows.append(dict(shape=f'C{c} {hw}x{hw} N{n}', dtype=name, impl=impl,
                             out=rel(y, ref_y), dx=rel(grads[0], ref_g[0]),
                             dparams=max(rel(a, b) for a, b in zip(grads[1:], ref_g[1:]))))
    return rows


def kernels(c: int, hw: int, n: int) -> list[dict]:
    rows = []
    for name, dtype in DTYPES.items():
        h = torch.randn(n, hw * hw, 4 * c, device=DEVICE, dtype=dtype) * 2
        a0, s0 = TorchOps.gelu_sumsq(h)
        a1, s1 = kernel_ops().gelu_sumsq(h)
        da, r = torch.randn_like(h), torch.randn(n, 4 * c, device=DEVICE)
        d0, d1 = TorchOps.gelu_grad(h, a0, da, r), kernel_ops().gelu_grad(h, a1, da, r)
        s, beta = torch.rand(n, 4 * c, device=DEVICE) + 0.5, torch.randn(4 * c, device=DEVICE)
        applied = dict(g=rel(kernel_ops().gelu_grn(h, s, beta), TorchOps.gelu_grn(h, s, beta)),
                       sums=max(rel(x1, x0) for x1, x0 in zip(kernel_ops().grn_grad_sums(h, da),
                                                                TorchOps.grn_grad_sums(h, da))),
                       dh_applied=rel(kernel_ops().gelu_grn_grad(h, da, s, r), TorchOps.gelu_grn_grad(h, da, s, r)))
        y = torch.randn(n, hw * hw, c, device=DEVICE, dtype=dtype)
        w1, b1 = (torch.randn(4 * c, c, device=DEVICE) * c ** -0.5).to(dtype), torch.randn(4 * c, device=DEVICE)
        w2, b2 = (torch.randn(c, 4 * c, device=DEVICE) * (4 * c) ** -0.5).to(dtype), torch.randn(c, device=DEVICE)
        res = torch.randn(n, hw * hw, c, device=DEVICE)
        (mh1, ms1), (mh0, ms0) = kernel_ops().linear_gelu_sumsq(y, w1, b1), TorchOps.linear_gelu_sumsq(y, w1, b1)
        matmuls = dict(mm_h=rel(mh1, mh0), mm_sumsq=rel(ms1, ms0),
                       mm_out=rel(kernel_ops().grn_linear(h, s, beta, w2, b2, res),
                                  TorchOps.grn_linear(h, s, beta, w2, b2, res)))
        rows.append(dict(shape=f'K{4 * c} L{hw * hw} N{n}', dtype=name, a=rel(a1, a0), sumsq=rel(s1, s0),
                         dh=rel(d1, d0), **applied, **matmuls))
    return rows


# (column, fused_block, Triton convolution, MLP form (None: as fused.mlp_form picks), training)
VARIANTS = (('plain', False, False, None, True), ('folded', True, True, 'folded', True),
            ('applied', True, True, 'applied', True), ('matmuls', True, True, 'matmuls', True),
            ('infer_plain', False, False, None, False), ('infer_cudnn', True, False, None, False),
            ('infer_folded', True, True, 'folded', False), ('infer_applied', True, True, 'applied', False),
            ('infer_matmuls', True, True, 'matmuls', False))


def timing(c: int, hw: int, n: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    torch.manual_seed(0)
    block = Block(c).to(DEVICE).to(memory_format=torch.channels_last)
    x = torch.randn(n, c, hw, hw, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    out = {}
    for column, fused, triton_conv, mlp, training in VARIANTS:
        block.fused_block = fused
        block.train(training)

        def step():
            with torch.autocast(DEVICE, dtype=dtype), torch.set_grad_enabled(training):
                y = block(x)
            if training:
                y.float().sum().backward()
        with variant(triton_conv, mlp):
            out[column] = measure(step, warmup=WARMUP, iters=ITERS, device=torch.device(DEVICE))['ms_median']
    return dict(shape=f'C{c} {hw}x{hw} N{n}', form=form(c, hw, n), **{f'{k}_ms': v for k, v in out.items()})


def ms_and_speedup(row: dict, column: str, base: str) -> str:
    return f'{row[f"{column}_ms"]:.3f} | {row[f"{base}_ms"] / row[f"{column}_ms"]:.2f}x'


def cpu_smoke() -> None:
    """Run everything on the CPU, small, with the kernels in Triton's interpreter (the fast paths' device checks
    patched out): a check of this script, not of speed."""
    global DEVICE, WARMUP, ITERS, SHAPES
    os.environ['TRITON_INTERPRET'] = '1'  # before the kernels are first imported
    DEVICE, WARMUP, ITERS, SHAPES = 'cpu', 1, 1, ((8, 5, 2), (16, 3, 3))
    mock.patch.object(fused_module, 'use_fused', lambda mode, training, x: mode is True).start()
    mock.patch.object(fused_module, 'use_triton_conv', lambda mode, x: mode is True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json-out')
    parser.add_argument('--cpu-smoke', action='store_true',
                        help='check this script on the CPU: tiny shapes, the kernels in Triton\'s interpreter')
    args = parser.parse_args()
    if args.cpu_smoke:
        cpu_smoke()
    elif not torch.cuda.is_available():
        raise SystemExit('error: this check needs a CUDA GPU (or --cpu-smoke)')
    report = dict(device=torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu (smoke)', torch=torch.__version__,
                  numerics=[], kernels=[], timing=[])

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
    print('\n| kernel input | dtype | gelu err | sumsq err | dh err | applied: g err | sums err | dh err '
          '| matmuls: h err | sumsq err | out err |\n|' + '---|' * 11, flush=True)
    for shape in SHAPES[:4]:
        for r in kernels(*shape):
            report['kernels'].append(r)
            print(f'| {r["shape"]} | {r["dtype"]} | {r["a"]:.1e} | {r["sumsq"]:.1e} | {r["dh"]:.1e} | {r["g"]:.1e} '
                  f'| {r["sums"]:.1e} | {r["dh_applied"]:.1e} | {r["mm_h"]:.1e} | {r["mm_sumsq"]:.1e} '
                  f'| {r["mm_out"]:.1e} |', flush=True)
        save()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print('\nms and speed-up over plain; training runs cuDNN\'s convolution, inference the Triton convolution and '
          'LayerNorm (maps up to 256 channels) but in "cuDNN conv" (the form fused.mlp_form picks)\n\n'
          '| block (bf16 autocast) | form | train: plain | folded | x | applied | x | matmuls | x | infer: plain '
          '| cuDNN conv | x | folded | x | applied | x | matmuls | x |\n|' + '---|' * 18, flush=True)
    from convnextv2_dense.models.fused import mlp_gemm  # imported by the timings, after --cpu-smoke's interpreter flag
    for shape in SHAPES:
        r = timing(*shape)
        report['timing'].append(r)
        train = ' | '.join(ms_and_speedup(r, col, 'plain') for col in ('folded', 'applied', 'matmuls'))
        infer = ' | '.join(ms_and_speedup(r, f'infer_{col}', 'infer_plain')
                           for col in ('cudnn', 'folded', 'applied', 'matmuls'))
        print(f'| {r["shape"]} | {r["form"]} | {r["plain_ms"]:.3f} | {train} | {r["infer_plain_ms"]:.3f} | {infer} |',
              flush=True)
        report['tiles'] = [[*key[:4], str(key[4]), [str(f) for f in key[5]], list(tile)]
                           for key, tile in mlp_gemm._tuned.items()]
        save()
    print('\nmatmul tiles chosen (kernel, rows, out, reduce, dtype, flags -> BLOCK_L, BLOCK_OUT, BLOCK_REDUCE, warps, '
          'stages):', *(' '.join(map(str, t)) for t in report.get('tiles', ())), sep='\n')
    worst = max(max(r['out'], r['dx'], r['dparams']) for r in report['numerics'] if r['impl'] != 'plain')
    return 0 if worst < 1e-2 or args.cpu_smoke else 1  # the smoke's maps are too small for the target


if __name__ == '__main__':
    sys.exit(main())
