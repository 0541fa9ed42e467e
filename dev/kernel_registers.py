"""Registers and stack (spilled) bytes per thread of the Triton kernels, compiled for an H100 (sm_90) here.

Triton compiles for a GPU target without a GPU (its bundled ptxas) and its bundled cuobjdump reads the
cubin's resource usage, so a kernel that spills to local memory shows on the CPU machine. A kernel whose 49
taps are all unrolled hoists every load and spills thousands of bytes per thread (the depthwise kernels did,
5 KB at the forward's 32 x 128 tile, before their row loop became a loop), and the MLP's matmuls spilled at
their first tiles.

    python dev/kernel_registers.py [--json]     # exit status 1 if a kernel spills
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop('TRITON_INTERPRET', None)  # compiled kernels, not interpreted ones (read when Triton is imported)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

import triton  # noqa: E402
import triton.backends.nvidia as nvidia_backend  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from convnextv2_dense.models.fused import dwconv, mlp_gemm, triton_ops  # noqa: E402

H100 = GPUTarget('cuda', 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(nvidia_backend.__file__), 'bin', 'cuobjdump')
TYPES = dict(x_ptr='*bf16', w_ptr='*fp32', b_ptr='*fp32', y_ptr='*bf16', nw_ptr='*fp32', nb_ptr='*fp32',
             dy_ptr='*bf16', dw_ptr='*fp32', H='i32', W='i32', C='i32', eps='fp32', rows='i32',
             rows_per_program='i32', row_blocks='i32', h_ptr='*bf16', a_ptr='*bf16', g_ptr='*bf16', dg_ptr='*bf16',
             da_ptr='*bf16', dh_ptr='*bf16', part_ptr='*fp32', s_ptr='*fp32', beta_ptr='*fp32', ds_ptr='*fp32',
             db_ptr='*fp32', r_ptr='*fp32', L='i32', K='i32', num_lb='i32', wt_ptr='*bf16', res_ptr='*bf16',
             out_ptr='*bf16')


def usage(kernel, constexprs: dict, num_warps: int, folder: str, num_stages: int = 3) -> tuple[int, int]:
    """(registers, stack bytes per thread) of ``kernel`` compiled for sm_90 with bf16 maps."""
    signature = {name: 'constexpr' if name in constexprs else TYPES[name] for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=H100,
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    path = os.path.join(folder, kernel.__name__ + '.cubin')
    with open(path, 'wb') as f:
        f.write(compiled.asm['cubin'])
    out = subprocess.run([CUOBJDUMP, '-res-usage', path], capture_output=True, text=True, check=True).stdout
    return int(re.search(r'REG:(\d+)', out).group(1)), int(re.search(r'STACK:(\d+)', out).group(1))


def shipped_variants():
    """(name, kernel, constexprs, num_warps, num_stages) for every configuration the launchers use."""
    # the depthwise convolution with its LayerNorm at each width it takes, maps 128 and 7 pixels wide
    convs = {dwconv.conv_config(w, c) for c in (40, 80, 96, 128, 160, 192, 256) for w in (128, 7)}
    for block_w, block_c, warps in sorted(convs):
        yield (f'dwconv+norm {block_w}x{block_c}', dwconv._dwconv_norm_kernel,
               dict(HAS_BIAS=True, BLOCK_W=block_w, BLOCK_C=block_c), warps, 3)
    blocks = dict(BLOCK_L=triton_ops.BLOCK_L, BLOCK_K=triton_ops.BLOCK_K)
    yield 'gelu_sumsq', triton_ops._gelu_sumsq_kernel, dict(STORE_A=True, **blocks), 4, 3
    yield 'sumsq_of_gelu', triton_ops._gelu_sumsq_kernel, dict(STORE_A=False, **blocks), 4, 3
    yield 'gelu_grn', triton_ops._gelu_grn_kernel, blocks, 4, 3
    yield 'grn_grad_sums', triton_ops._grn_grad_sums_kernel, blocks, 4, 3
    yield 'gelu_grad', triton_ops._gelu_grad_kernel, dict(HAS_SCALE=False, **blocks), 4, 3
    yield 'gelu_grn_grad', triton_ops._gelu_grad_kernel, dict(HAS_SCALE=True, **blocks), 4, 3
    # the MLP's two matmuls: every tile the launchers may time (mlp_gemm.candidate_tiles) at every stage width
    # (atto to huge) on maps of 128 x 128, 7 x 7 and 4 x 4 pixels
    shapes = [(rows, c) for c in (40, 96, 128, 192, 256, 384, 512, 768, 1024) for rows in (128 * 128, 49, 16)]
    for bl, bk, bc, warps, stages in sorted({t for rows, c in shapes for t in mlp_gemm.candidate_tiles(rows, 4 * c, c)}):
        for store_gelu in (False, True):  # training keeps h, inference gelu(h)
            yield (f'linear_gelu_sumsq {bl}x{bk}x{bc}{" store gelu" * store_gelu}{f" stages {stages}" * (stages != 3)}',
                   mlp_gemm._linear_gelu_sumsq_kernel,
                   dict(STORE_GELU=store_gelu, FP32=False, BLOCK_L=bl, BLOCK_K=bk, BLOCK_C=bc), warps, stages)
    for bl, bc, bk, warps, stages in sorted({t for rows, c in shapes for t in mlp_gemm.candidate_tiles(rows, c, 4 * c)}):
        for gelu in (True, False):
            yield (f'grn_linear {bl}x{bc}x{bk} residual{" gelu" * gelu}{f" stages {stages}" * (stages != 3)}',
                   mlp_gemm._grn_linear_kernel,
                   dict(GELU=gelu, HAS_RES=True, FP32=False, BLOCK_L=bl, BLOCK_C=bc, BLOCK_K=bk), warps, stages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of a table')
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, kernel, constexprs, warps, stages in shipped_variants():
            rows[name] = usage(kernel, constexprs, warps, folder, stages)
            if not args.json:
                print(f'{name:40s} warps {warps}  registers {rows[name][0]:3d}  stack {rows[name][1]:5d} B', flush=True)
    if args.json:
        print(json.dumps({name: dict(registers=r, stack=s) for name, (r, s) in rows.items()}))
    spilling = [name for name, (_, stack) in rows.items() if stack > 0]
    if spilling:
        print(f'spilling: {", ".join(spilling)}', file=sys.stderr)
    return 1 if spilling else 0


if __name__ == '__main__':
    sys.exit(main())
