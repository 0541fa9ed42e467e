"""Maintainer check of GRN's written-out backward (``layers.GRNFunction``) against autograd through the plain
ops, on a GPU: forward + backward time per block shape (bf16 and fp32, CUDA events, median of 20 after 5
warm-ups), and the gradients' agreement.

    python dev/check_grn.py [--json-out FILE] [--cpu-smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from convnextv2_dense.bench.timing import measure  # noqa: E402
from convnextv2_dense.models import layers  # noqa: E402

# (images, map side, 4C): the hidden activation of base's four stages at 512 x16, tiny's at 512 x32, 2-image seg
SHAPES = ((16, 128, 512), (16, 64, 1024), (16, 32, 2048), (16, 16, 4096), (32, 128, 384), (32, 32, 1536),
          (2, 128, 512), (2, 32, 2048))
WARMUP, ITERS = 5, 20


def step(grn: layers.GRN, x: torch.Tensor, dout: torch.Tensor, written_out: bool):
    def run():
        x.grad = grn.gamma.grad = grn.beta.grad = None
        function = layers.GRNFunction.apply if written_out else layers.grn
        out = function(x, grn.gamma, grn.beta, grn.eps)
        out.backward(dout)
    return run


def check(n: int, side: int, k: int, dtype: torch.dtype, device: torch.device) -> dict:
    torch.manual_seed(0)
    grn = layers.GRN(k).to(device)
    with torch.no_grad():
        grn.gamma.normal_(0, 0.5)
        grn.beta.normal_(0, 0.5)
    x = torch.randn(n, side, side, k, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn_like(x)
    grads = []
    for written_out in (False, True):
        step(grn, x, dout, written_out)()
        grads.append([t.grad.float() for t in (x, grn.gamma, grn.beta)])
    err = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(grads[1], grads[0]))
    ms = [measure(step(grn, x, dout, w), WARMUP, ITERS, device)['ms_median'] for w in (False, True)]
    return dict(shape=f'N{n} {side}x{side} 4C{k}', dtype=str(dtype).removeprefix('torch.'), autograd_ms=ms[0],
                written_out_ms=ms[1], speedup=ms[0] / ms[1], max_rel_grad_diff=err)


def main() -> int:
    global SHAPES, WARMUP, ITERS
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json-out')
    parser.add_argument('--cpu-smoke', action='store_true', help='check this script on the CPU on tiny shapes')
    args = parser.parse_args()
    if args.cpu_smoke:
        SHAPES, WARMUP, ITERS = ((2, 4, 16), (3, 5, 32)), 1, 2
    elif not torch.cuda.is_available():
        raise SystemExit('error: this check needs a CUDA GPU (or --cpu-smoke)')
    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    print('| hidden activation | dtype | autograd ms | written-out ms | speed-up | max rel grad diff |\n'
          '|---|---|---|---|---|---|', flush=True)
    rows = []
    for shape in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            r = check(*shape, dtype, device)
            rows.append(r)
            print(f'| {r["shape"]} | {r["dtype"]} | {r["autograd_ms"]:.3f} | {r["written_out_ms"]:.3f} | '
                  f'{r["speedup"]:.2f}x | {r["max_rel_grad_diff"]:.1e} |', flush=True)
    if args.json_out:
        with open(args.json_out, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (smoke)',
                           torch=torch.__version__, rows=rows), f, indent=2)
    return 0 if all(r['max_rel_grad_diff'] < (1e-2 if r['dtype'] == 'bfloat16' else 1e-4) for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
