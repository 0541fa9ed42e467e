"""``tools/export.py`` / ``python -m convnextv2_dense export``: ONNX or ``torch.export`` with a parity gate.

    python tools/export.py backbone SOURCE --out convnextv2.onnx
    python tools/export.py segmentor CONFIG CHECKPOINT --out upernet.onnx
    python tools/export.py detector CONFIG CHECKPOINT --out mask-rcnn-features.onnx

The suffix of ``--out`` picks the format: ``.onnx`` (TorchScript-based exporter, onnxruntime check) or
``.pt2`` (``torch.export``, checked by running the saved program). Every export is run next to eager
PyTorch on a real image and on random inputs; past the tolerance (1e-4 relative in fp32) the file is
removed and the exit status is 1.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import pickle
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .export_check import (FP16_TOLERANCE, FP32_TOLERANCE, ParityError, gate, low_precision_reductions,
                           onnx_runner, pt2_runner, remove_export, write_onnx, write_pt2)
from .sources import InferenceInputError

DYNAMIC = ('batch', 'height', 'width')


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``tools/export.py``."""
    parser = argparse.ArgumentParser(
        prog=prog, description='Export a ConvNeXt V2 backbone, an mmseg segmentor or an mmdet detector\'s backbone '
        '+ neck to ONNX (.onnx) or torch.export (.pt2); the file is kept only if it matches eager PyTorch '
        '(1e-4 relative in fp32) on a real image and on random inputs.')
    parser.add_argument('what', choices=('backbone', 'segmentor', 'detector'),
                        help='backbone: ConvNeXt V2 alone (SOURCE); segmentor: a whole mmseg model in whole-image '
                             'mode, logits out (CONFIG CHECKPOINT); detector: an mmdet detector\'s backbone + neck, '
                             'the part before the RoI operations (CONFIG CHECKPOINT)')
    parser.add_argument('sources', nargs='+', metavar='SOURCE',
                        help='backbone: anything ConvNeXtV2.from_pretrained reads; otherwise CONFIG CHECKPOINT')
    parser.add_argument('--out', required=True, help='output file, .onnx or .pt2')
    parser.add_argument('--input-size', nargs=2, type=int, metavar=('H', 'W'), default=None,
                        help='example input size (default: 224 224 for a backbone, the config\'s crop size or '
                             '512 512 otherwise)')
    parser.add_argument('--static', action='store_true', help='fix batch and image size (default: dynamic)')
    parser.add_argument('--out-features', nargs='+', metavar='STAGE', default=None,
                        help='backbone: stages to return (default: stage1 .. stage4)')
    parser.add_argument('--fp16', action='store_true', help='export in float16; GRN and LayerNorm statistics stay '
                        'fp32 in the graph, and the fp16 model is checked against fp32')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (17 or later; default: 18)')
    parser.add_argument('--check-image', metavar='IMAGE', default=None,
                        help='a real image for the parity check (default: a drawn demo scene)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle CHECKPOINT completely (weights_only=False): only for files you trust')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (export there; the ONNX check uses the CUDA '
                        'execution provider when onnxruntime has it)')
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    suffix = osp.splitext(args.out)[1].lower()
    if suffix not in ('.onnx', '.pt2'):
        parser.error(f'--out must end in .onnx or .pt2, got {args.out!r}')
    args.format = suffix[1:]
    expected = 1 if args.what == 'backbone' else 2
    if len(args.sources) != expected:
        parser.error(f'{args.what} takes {"SOURCE" if expected == 1 else "CONFIG CHECKPOINT"}, '
                     f'got {args.sources}')
    if args.out_features is not None and args.what != 'backbone':
        parser.error('--out-features applies to a backbone export')
    if args.opset < 17:
        parser.error(f'--opset must be 17 or later (LayerNormalization keeps fp32 statistics), got {args.opset}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU')
    if args.input_size is not None and min(args.input_size) < 32:
        parser.error(f'--input-size must be at least 32 x 32, got {args.input_size}')


def _target(args: argparse.Namespace):
    """The eager module, its output names, the default input size and which dims may be dynamic."""
    from .export_modules import DetectorFeaturesExport, SegmentorExport
    if args.what == 'backbone':
        from .features import load_backbone
        module = load_backbone(args.sources[0], args.out_features, args.device)
        return module, module.output_names, (224, 224)
    from .model_loading import load_model
    loaded = load_model(args.sources[0], args.sources[1], args.device, trust=args.trust_checkpoint)
    expected = 'seg' if args.what == 'segmentor' else 'det'
    if loaded.task != expected:
        raise InferenceInputError(f'{args.sources[0]} is a {"segmentation" if loaded.task == "seg" else "detection"} '
                                  f'config; export it as {"segmentor" if loaded.task == "seg" else "detector"}')
    if args.what == 'segmentor':
        module = SegmentorExport(loaded.model)
        size = getattr(loaded.model.data_preprocessor, 'size', None) or (512, 512)
    else:
        module = DetectorFeaturesExport(loaded.model)
        size = (512, 512)
    return module.eval(), module.output_names, tuple(size)


def check_inputs(size: tuple[int, int], dynamic: Sequence[str], image_path: str | None) -> list[tuple[str, np.ndarray]]:
    """A real image at the export size, a random batch of 2, and one at another size if the size is dynamic."""
    from PIL import Image
    if image_path is not None:
        from .sources import read_image
        rgb, name = read_image(image_path), osp.basename(image_path)
    else:
        from ..data.drawing import draw_scene
        rgb, name = draw_scene(np.random.default_rng(0), 256, ('circle', 'square', 'triangle')).image, 'demo scene'
    rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    inputs = [(f'{name} {size[0]}x{size[1]}', rgb.transpose(2, 0, 1)[None].astype(np.float32))]
    rng = np.random.default_rng(0)
    batch = 2 if 'batch' in dynamic else 1
    inputs.append((f'random {batch}x3x{size[0]}x{size[1]}', rng.uniform(0, 255, (batch, 3, *size)).astype(np.float32)))
    if 'height' in dynamic:
        other = (size[0] + 32, size[1] + 64)
        inputs.append((f'random 1x3x{other[0]}x{other[1]}', rng.uniform(0, 255, (1, 3, *other)).astype(np.float32)))
    return inputs


def export(args: argparse.Namespace) -> int:
    """Write the file, then run the parity gate (and, for fp16 ONNX, the fp32-statistics check)."""
    import torch

    from .export_modules import make_exportable
    reference, output_names, default_size = _target(args)
    size = tuple(args.input_size) if args.input_size else default_size
    dynamic = () if args.static else DYNAMIC
    exportable = copy.deepcopy(reference).requires_grad_(False)  # no training-only paths while tracing
    swapped = make_exportable(exportable)
    if args.fp16:
        exportable = exportable.half()
    dtype = torch.float16 if args.fp16 else torch.float32
    # torch.export fixes a dimension whose example is 1 (0/1 specialisation): give it a batch of 2
    batch = 2 if args.format == 'pt2' and 'batch' in dynamic else 1
    example = torch.zeros(batch, 3, *size, dtype=dtype, device=args.device)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    print(f'exporting {args.what} ({", ".join(f"{n} {k}" for k, n in swapped.items() if n)} swapped for '
          f'export-safe versions) to {args.out}; dynamic: {", ".join(dynamic) or "none"}', flush=True)
    with torch.no_grad():
        if args.format == 'onnx':
            write_onnx(exportable, example, args.out, output_names, dynamic, args.opset)
        else:
            write_pt2(exportable, example, args.out, dynamic)
    inputs = check_inputs(size, dynamic, args.check_image)
    reference = reference.float().cpu()
    tolerance = FP16_TOLERANCE if args.fp16 else FP32_TOLERANCE
    if args.fp16 and args.format == 'onnx':
        bad = low_precision_reductions(args.out)
        if bad:
            remove_export(args.out)
            raise ParityError(f'fp16 graph reduces in low precision ({"; ".join(bad[:5])}); removed {args.out}')
        print('fp16 graph: every reduction (GRN) reads fp32, LayerNormalization keeps fp32 statistics')
    runner = _runner(args)
    if runner is None:
        return 0
    print(f'parity with eager PyTorch fp32 (relative error = max-abs / max|eager|, tolerance {tolerance:.0e}):')
    gate(args.out, runner, reference, inputs, output_names, tolerance)
    print(f'ok: {args.out}')
    return 0


def _runner(args: argparse.Namespace):
    """How to run the written file, or None (with the reason printed) when this machine cannot."""
    if args.format == 'pt2':
        return pt2_runner(args.out)
    providers = ['CPUExecutionProvider']
    import onnxruntime as ort
    if args.device.startswith('cuda') and 'CUDAExecutionProvider' in ort.get_available_providers():
        providers.insert(0, 'CUDAExecutionProvider')
    try:
        return onnx_runner(args.out, providers)
    except Exception as err:  # onnxruntime's NOT_IMPLEMENTED (no fp16 kernel on this execution provider)
        if not args.fp16:
            remove_export(args.out)
            raise ParityError(f'onnxruntime cannot load {args.out}: {err}; removed it') from None
        print(f'NOT CHECKED: onnxruntime ({"/".join(providers)}) cannot run this fp16 graph here: '
              f'{str(err).splitlines()[0]}\nThe fp16-vs-fp32 parity check is pending: run the same command with '
              '--device cuda on a machine with onnxruntime-gpu. The file is kept.')
        return None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``tools/export.py``; return the exit status."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')  # mm's imports; not the user's concern
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    from ..weights import CheckpointError
    from .model_loading import CheckpointMismatchError
    try:
        return export(args)
    except (ParityError, InferenceInputError, CheckpointMismatchError, CheckpointError, pickle.UnpicklingError) as err:
        print(f'export: error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
