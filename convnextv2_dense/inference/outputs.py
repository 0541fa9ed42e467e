"""What ``tools/infer.py`` writes for each frame, and the one-line summary it prints.

Segmentation: ``labels/NAME.png`` (class index per pixel: 8-bit, or 16-bit past 256 classes) and
``overlays/NAME.png``; ``classes.json`` says which index is which class and colour. Detection:
``overlays/NAME.png`` and one ``predictions.json`` (see :mod:`.coco_results`). A video's overlays go
into ``overlays/NAME.mp4`` instead of one picture per frame.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Sequence

import numpy as np

from .drawing import overlay_instances, overlay_labels
from .predict import Instances
from .sources import Frame


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 / uint16 array as PNG, making folders."""
    from PIL import Image
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


class VideoSink:
    """Overlay frames of videos, written as ``overlays/NAME.mp4`` (one open writer at a time)."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._writer = None

    def write(self, path: str, rgb: np.ndarray, fps: float) -> None:
        import cv2
        if path != self._path:
            self.close()
            os.makedirs(osp.dirname(path), exist_ok=True)
            self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (rgb.shape[1], rgb.shape[0]))
            self._path = path
        self._writer.write(np.ascontiguousarray(rgb[..., ::-1]))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._writer, self._path = None, None


def _overlay_path(out_dir: str, frame: Frame, video: bool) -> str:
    if video:
        return osp.join(out_dir, 'overlays', osp.dirname(frame.name) + '.mp4')
    return osp.join(out_dir, 'overlays', frame.name + '.png')


def write_seg(out_dir: str, frame: Frame, labels: np.ndarray, palette: np.ndarray, video: bool,
              sink: VideoSink, fps: float) -> None:
    """The label PNG and the overlay of one frame."""
    dtype = np.uint8 if len(palette) <= 256 else np.uint16
    save_png(labels.astype(dtype), osp.join(out_dir, 'labels', frame.name + '.png'))
    picture = overlay_labels(frame.rgb, labels, palette)
    if video:
        sink.write(_overlay_path(out_dir, frame, True), picture, fps)
    else:
        save_png(picture, _overlay_path(out_dir, frame, False))


def write_det(out_dir: str, frame: Frame, shown: Instances, classes: Sequence[str], palette: np.ndarray,
              video: bool, sink: VideoSink, fps: float) -> None:
    """The overlay of one frame's detections (those above the score threshold)."""
    picture = overlay_instances(frame.rgb, shown.boxes, shown.labels, shown.scores, shown.masks, classes, palette)
    if video:
        sink.write(_overlay_path(out_dir, frame, True), picture, fps)
    else:
        save_png(picture, _overlay_path(out_dir, frame, False))


def write_classes(out_dir: str, classes: Sequence[str], palette: np.ndarray) -> str:
    """``classes.json``: ``[{"index": 0, "name": "wall", "color": [r, g, b]}, ...]``."""
    path = osp.join(out_dir, 'classes.json')
    os.makedirs(out_dir, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump([{'index': i, 'name': name, 'color': [int(c) for c in palette[i]]}
                   for i, name in enumerate(classes)], f, indent=1)
    return path


def seg_summary(frame: Frame, labels: np.ndarray, classes: Sequence[str], top: int = 3) -> str:
    """``'img1 128x128: wall 71.2%, sky 20.1%, tree 8.7%'``."""
    counts = np.bincount(labels.ravel().clip(0), minlength=len(classes))
    order = np.argsort(-counts)[:top]
    parts = [f'{classes[i] if i < len(classes) else i} {100 * counts[i] / labels.size:.1f}%'
             for i in order if counts[i]]
    return f'{frame.name} {labels.shape[1]}x{labels.shape[0]}: ' + ', '.join(parts)


def det_summary(frame: Frame, shown: Instances, classes: Sequence[str], score_thr: float) -> str:
    """``'img1 96x96: 3 objects >= 0.30 (2 circle, 1 square), best 0.98'``."""
    height, width = frame.rgb.shape[:2]
    head = f'{frame.name} {width}x{height}: {len(shown.scores)} objects >= {score_thr:.2f}'
    if not len(shown.scores):
        return head
    names = [classes[i] if i < len(classes) else str(i) for i in shown.labels]
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    listed = ', '.join(f'{n} {name}' for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f'{head} ({listed}), best {float(shown.scores.max()):.2f}'
