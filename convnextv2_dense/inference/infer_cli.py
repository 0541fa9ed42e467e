"""``tools/infer.py`` / ``python -m convnextv2_dense infer``: a trained model on a user's images or videos.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] [--out-dir DIR] [--device cpu] ...
    python tools/infer.py --backbone SOURCE INPUT [INPUT ...]

INPUT is an image, a folder (searched recursively), a glob (quoted) or a video file. Exit status: 0 on
success; 1 for a bad input, a checkpoint that does not fit the config, or another named problem (the
message says which file); 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os.path as osp
import pickle
import sys
import warnings
from collections.abc import Sequence

from .sources import InferenceInputError, count_frames, find_sources, iter_frames, video_fps

DEFAULT_OUT_DIR = 'work_dirs/infer'


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``tools/infer.py``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Run a trained segmentor or detector (an mmseg / mmdet config and its checkpoint) on '
                    'images, folders, globs or videos; or, with --backbone, write ConvNeXt V2 feature maps.',
        epilog='examples:\n  python tools/infer.py configs/demo/upernet_convnextv2_atto_demo.py best.pth '
               'photos/ --out-dir out\n  python tools/infer.py --backbone facebook/convnextv2-tiny-1k-224 '
               'img.jpg --out-dir feats',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('args', nargs='+', metavar='ARG',
                        help='CONFIG CHECKPOINT INPUT [INPUT ...], or only INPUTs with --backbone; CONFIG is a '
                             'file or a model name of model-index.yml (as in the README table); CHECKPOINT is a '
                             'path, an http(s) URL or anything mmengine loads')
    parser.add_argument('--backbone', metavar='SOURCE',
                        help='backbone-only mode: an HF repo id or directory, or an official / timm / mmpretrain '
                             '/ our checkpoint file; writes features/NAME.npz and a PCA picture per stage')
    parser.add_argument('--out-features', nargs='+', metavar='STAGE', default=None,
                        help='with --backbone: stages to write (default: stage1 stage2 stage3 stage4)')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help=f'where results go (default: {DEFAULT_OUT_DIR})')
    parser.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass (same-size images '
                        'are batched together; default: 1)')
    parser.add_argument('--score-thr', type=float, default=None,
                        help='detection: smallest score drawn and counted in the summary (default 0.3); '
                             'predictions.json keeps every detection the model returns')
    parser.add_argument('--coco-ann', metavar='FILE', default=None,
                        help='detection: take image ids (by file name) and category ids (by class name) from '
                             'this COCO annotation file, so predictions.json can be scored against it')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle CHECKPOINT completely (weights_only=False): only for files you trust; by '
                             'default only tensors, containers, numpy values and mmengine HistoryBuffers are read')
    parser.add_argument('--compile', action='store_true', help='keep torch.compile on for a backbone whose '
                        'config asks for it (default: eager)')
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.backbone:
        args.config, args.checkpoint, args.inputs = None, None, args.args
        for flag, value in (('--score-thr', args.score_thr), ('--coco-ann', args.coco_ann),
                            ('--cfg-options', args.cfg_options)):
            if value is not None:
                parser.error(f'{flag} applies to a config and checkpoint, not to --backbone')
        return
    if args.out_features is not None:
        parser.error('--out-features applies to --backbone mode only')
    if len(args.args) < 3:
        parser.error('expected CONFIG CHECKPOINT INPUT [INPUT ...] (or --backbone SOURCE INPUT ...), got '
                     f'{len(args.args)} argument(s): {args.args}')
    args.config, args.checkpoint, args.inputs = args.args[0], args.args[1], args.args[2:]
    if args.score_thr is not None and not 0.0 <= args.score_thr <= 1.0:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')


def _device(requested: str | None) -> str:
    import torch
    return requested or ('cuda' if torch.cuda.is_available() else 'cpu')


class _Progress:
    """A tqdm bar on stderr when there is more than one frame; summaries go to stdout above it."""

    def __init__(self, total: int | None) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit='img', file=sys.stderr, dynamic_ncols=True,
                        disable=total == 1)

    def done(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.bar.write(line, file=sys.stdout)
        self.bar.update(len(lines))

    def close(self) -> None:
        self.bar.close()


def _frames(sources, failed: list[str]):
    """Every frame of every source; a file that cannot be read is reported, noted in ``failed`` and skipped,
    so one bad file in a folder does not cost the results of the others."""
    for source in sources:
        try:
            for frame in iter_frames(source):
                yield source, frame
        except InferenceInputError as err:
            print(f'infer: error: {err}', file=sys.stderr, flush=True)
            failed.append(source.path)


def _batched(sources, batch_size: int, failed: list[str]):
    """Batches of (source, frame) pairs of the same image size, at most ``batch_size`` each."""
    batch = []
    for source, frame in _frames(sources, failed):
        if batch and (len(batch) == batch_size or frame.rgb.shape != batch[0][1].rgb.shape):
            yield batch
            batch = []
        batch.append((source, frame))
    if batch:
        yield batch


def run_backbone(args: argparse.Namespace, sources, failed: list[str]) -> None:
    """``--backbone``: feature maps and pictures."""
    from .features import extract, feature_summary, load_backbone, write_features
    model = load_backbone(args.backbone, args.out_features, _device(args.device))
    print(f'backbone: {model.backbone.load_report}'.splitlines()[0], flush=True)
    progress = _Progress(count_frames(sources))
    try:
        for batch in _batched(sources, args.batch_size, failed):
            frames = [frame for _, frame in batch]
            lines = []
            for frame, maps in zip(frames, extract(model, frames)):
                write_features(args.out_dir, frame, maps)
                lines.append(feature_summary(frame, maps))
            progress.done(lines)
    finally:
        progress.close()
    print(f'wrote {osp.join(args.out_dir, "features")}/NAME.npz and NAME_STAGE.png')


def run_model(args: argparse.Namespace, sources, failed: list[str]) -> None:
    """A segmentor or detector on every frame."""
    from .coco_results import CocoResults
    from .drawing import make_palette
    from .model_loading import load_model
    from .outputs import VideoSink, det_summary, seg_summary, write_classes, write_det, write_seg
    from .predict import predict_det, predict_seg
    loaded = load_model(args.config, args.checkpoint, _device(args.device), args.cfg_options, args.compile,
                        args.trust_checkpoint)
    if loaded.task == 'seg' and (args.score_thr is not None or args.coco_ann is not None):
        raise InferenceInputError('--score-thr and --coco-ann apply to detection configs; '
                                  f'{args.config} is a segmentation config')
    score_thr = 0.3 if args.score_thr is None else args.score_thr
    classes, palette = loaded.classes, make_palette(len(loaded.classes), loaded.palette)
    results = CocoResults(sources, classes, args.coco_ann) if loaded.task == 'det' else None
    fps = {s.path: video_fps(s.path) for s in sources if s.is_video}
    sink, progress = VideoSink(), _Progress(count_frames(sources))
    try:
        for batch in _batched(sources, args.batch_size, failed):
            frames = [frame for _, frame in batch]
            lines = []
            if loaded.task == 'seg':
                for (source, frame), labels in zip(batch, predict_seg(loaded.model, frames)):
                    write_seg(args.out_dir, frame, labels, palette, source.is_video, sink, fps.get(source.path, 0))
                    lines.append(seg_summary(frame, labels, classes))
            else:
                for (source, frame), found in zip(batch, predict_det(loaded.model, frames)):
                    file_name = f'{source.path}#{frame.index}' if source.is_video else source.path
                    image_id = results.image_id(source.path, frame.name, source.is_video)
                    results.add(image_id, file_name, found.boxes, found.labels, found.scores, found.masks)
                    shown = found.above(score_thr)
                    write_det(args.out_dir, frame, shown, classes, palette, source.is_video, sink,
                              fps.get(source.path, 0))
                    lines.append(det_summary(frame, shown, classes, score_thr))
            progress.done(lines)
    finally:
        sink.close()
        progress.close()
    write_classes(args.out_dir, classes, palette)
    if results is not None:
        path = results.write(osp.join(args.out_dir, 'predictions.json'))
        print(f'wrote {path} ({len(results.entries)} detections, COCO results format)')
    print(f'wrote {osp.join(args.out_dir, "overlays")}' + (f' and {osp.join(args.out_dir, "labels")}'
                                                           if loaded.task == 'seg' else ''))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run ``tools/infer.py``; return the exit status."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')  # mm's imports; not the user's concern
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    from ..weights import CheckpointError
    from .model_loading import CheckpointMismatchError
    failed: list[str] = []
    try:
        sources = find_sources(args.inputs)
        (run_backbone if args.backbone else run_model)(args, sources, failed)
    except (InferenceInputError, CheckpointMismatchError, CheckpointError, pickle.UnpicklingError) as err:
        print(f'infer: error: {err}', file=sys.stderr)
        return 1
    if failed:
        print(f'infer: error: {len(failed)} input(s) could not be read (the others were written): '
              + ', '.join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
