"""Convert a ConvNeXt V2 checkpoint of any supported format into ours, or into an HF transformers folder.

    python tools/convert_checkpoint.py convnextv2_tiny_1k_224_ema.pt tiny.safetensors --arch-check
    python tools/convert_checkpoint.py facebook/convnextv2-tiny-1k-224 tiny.pth --arch tiny
    python tools/convert_checkpoint.py work_dirs/mask-rcnn/epoch_36.pth hf_backbone/ --to hf

SRC is a file (official release, official FCMAE, timm, mmpretrain, an OpenMMLab detector or segmentor
with our backbone, HF's TensorFlow tf_model.h5, ours), an HF transformers folder, an http(s) URL or an HF
hub repo id. With ``--to ours`` (the default) DST ending in ``.safetensors`` is written with safetensors,
anything else with ``torch.save`` of plain tensors. With ``--to hf`` DST is a folder that HF transformers'
``from_pretrained`` loads (``config.json`` + ``model.safetensors``): ConvNextV2ForImageClassification for
a classifier, ConvNextV2Backbone for a dense backbone with output norms (a fine-tuned detector or
segmentor), ConvNextV2Model otherwise; ``--hf-class`` picks another.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, REPO_ROOT)

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier, resolve_arch  # noqa: E402
from convnextv2_dense.weights import (describe_arch, read_canonical, read_checkpoint,  # noqa: E402
                                      save_state_dict)
from convnextv2_dense.weights.hf_export import HF_CLASSES, save_hf_pretrained  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='checkpoint file, HF transformers folder, URL or HF hub repo id')
    parser.add_argument('dst', help='output: *.safetensors or *.pth (--to ours), a folder (--to hf)')
    parser.add_argument('--to', choices=('ours', 'hf'), default='ours',
                        help='output layout: ours (default) or an HF transformers folder')
    parser.add_argument('--hf-class', choices=HF_CLASSES,
                        help='with --to hf: the HF class to name the keys for (default: the one that holds '
                             'every tensor of SRC)')
    parser.add_argument('--arch', help='refuse the checkpoint unless it is this arch (e.g. tiny)')
    parser.add_argument('--arch-check', action='store_true',
                        help='build the inferred model from DST and load it strictly, to verify the result')
    return parser.parse_args(argv)


def _id2label(hf_config: dict | None, num_classes: int) -> dict[int, str] | None:
    """Class names of an HF source's config.json, when they fit the head."""
    labels = (hf_config or {}).get('id2label')
    if not isinstance(labels, dict) or len(labels) != num_classes:
        return None
    try:
        return {int(i): str(name) for i, name in labels.items()}
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hf_class is not None and args.to != 'hf':
        print('error: --hf-class goes with --to hf', file=sys.stderr)
        return 2
    raw = read_checkpoint(args.src)
    ckpt = read_canonical(raw)
    spec = ckpt.arch
    if args.arch is not None and resolve_arch(args.arch) != spec:
        print(f'error: {args.src} holds a ConvNeXt V2-{describe_arch(spec)}, not {args.arch}', file=sys.stderr)
        return 1
    print(f'format detected: {ckpt.format}')
    print(f'arch: {describe_arch(spec)} (depths={spec.depths}, dims={spec.dims})')
    if args.to == 'hf':
        head = ckpt.state_dict.get('head.weight')
        labels = _id2label(raw.hf_config, int(head.shape[0])) if head is not None else None
        try:
            export = save_hf_pretrained(ckpt.state_dict, args.dst, spec, architecture=args.hf_class,
                                        layer_norm_eps=ckpt.hints.get('head_norm_eps'), id2label=labels)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
        dst = export.folder
        print(f'HF class: {export.architecture}')
        print(f'tensors written: {export.tensors} to {dst / "model.safetensors"} (+ config.json)')
        if export.fresh:
            print(f'written fresh (not in {args.src}, identity LayerNorm): {", ".join(export.fresh)}')
        if export.left_out:
            print(f'left out (no place in {export.architecture}): {", ".join(export.left_out)}')
    else:
        meta = {'source': str(args.src), 'source_format': ckpt.format, **ckpt.hints}
        dst = save_state_dict(ckpt.state_dict, args.dst, meta)
        print(f'tensors written: {len(ckpt.state_dict)} to {dst}')
    if ckpt.dropped:
        print(f'dropped (not part of the network): {len(ckpt.dropped)} tensors')
    if args.arch_check:
        is_classifier = {'norm.weight', 'head.weight'} <= set(ckpt.state_dict)
        if args.to == 'hf' and export.architecture != HF_CLASSES[0]:
            is_classifier = False
        model = (ConvNeXtV2Classifier if is_classifier else ConvNeXtV2).from_pretrained(dst)
        print(f'arch check: {type(model).__name__} built and loaded strictly')
        print(model.load_report)
    return 0


if __name__ == '__main__':
    sys.exit(main())
