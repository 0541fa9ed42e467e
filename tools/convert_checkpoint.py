"""Convert a ConvNeXt V2 checkpoint of any supported format into convnextv2_dense's own format.

    python tools/convert_checkpoint.py convnextv2_tiny_1k_224_ema.pt tiny.safetensors --arch-check
    python tools/convert_checkpoint.py facebook/convnextv2-tiny-1k-224 tiny.pth --arch tiny

SRC is a file (official release, official FCMAE, timm, mmpretrain, an OpenMMLab detector or segmentor
with our backbone, ours), an HF transformers folder, an http(s) URL or an HF hub repo id. DST ending in
``.safetensors`` is written with safetensors, anything else with ``torch.save`` of plain tensors.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier, resolve_arch  # noqa: E402
from convnextv2_dense.weights import describe_arch, read_canonical, save_state_dict  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint file, HF transformers folder, URL or HF hub repo id')
    parser.add_argument('dst', help='output file: *.safetensors or *.pth')
    parser.add_argument('--arch', help='refuse the checkpoint unless it is this arch (e.g. tiny)')
    parser.add_argument('--arch-check', action='store_true',
                        help='build the inferred model from DST and load it strictly, to verify the result')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = read_canonical(args.src)
    spec = ckpt.arch
    if args.arch is not None and resolve_arch(args.arch) != spec:
        print(f'error: {args.src} holds a ConvNeXt V2-{describe_arch(spec)}, not {args.arch}', file=sys.stderr)
        return 1
    meta = {'source': str(args.src), 'source_format': ckpt.format, **ckpt.hints}
    dst = save_state_dict(ckpt.state_dict, args.dst, meta)
    print(f'format detected: {ckpt.format}')
    print(f'arch: {describe_arch(spec)} (depths={spec.depths}, dims={spec.dims})')
    print(f'tensors written: {len(ckpt.state_dict)} to {dst}')
    if ckpt.dropped:
        print(f'dropped (not part of the network): {len(ckpt.dropped)} tensors')
    if args.arch_check:
        is_classifier = {'norm.weight', 'head.weight'} <= set(ckpt.state_dict)
        model = (ConvNeXtV2Classifier if is_classifier else ConvNeXtV2).from_pretrained(dst)
        print(f'arch check: {type(model).__name__} built and loaded strictly')
        print(model.load_report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
