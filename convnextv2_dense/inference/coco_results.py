"""Detections of ``tools/infer.py`` as one COCO results file, the list ``tools/coco_eval.py`` reads.

Each entry holds ``image_id``, ``category_id``, ``bbox`` (x, y, width, height), ``score`` and, for a
model with a mask head, ``segmentation`` (compressed RLE, ``counts`` as text, as mmdet writes it), plus
``file_name`` and ``category_name`` so that a user can match entries to their files without a lookup.

Ids: with a COCO annotation file, image ids are looked up by file name and category ids by class name
(as mmdet's ``CocoMetric`` does); without one, files named by a number (COCO's ``000000397133.jpg``)
keep that number, other inputs are numbered 1, 2, ... in order, and category ids are class index + 1.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np

from .sources import InferenceInputError, Source


class CocoResults:
    """Collects detections frame by frame and writes them atomically.

    Args:
        sources (Sequence[Source]): Every input, to choose the image-id scheme up front.
        class_names (Sequence[str]): The model's classes, by label index.
        ann_file (str, optional): A COCO instances file whose image and category ids to use.
            Defaults to None.
    """

    def __init__(self, sources: Sequence[Source], class_names: Sequence[str], ann_file: str | None = None) -> None:
        self.class_names = tuple(class_names)
        self.entries: list[dict[str, Any]] = []
        self._next_id = 1
        self._by_file: dict[str, int] | None = None
        self.category_ids = list(range(1, len(self.class_names) + 1))
        if ann_file is not None:
            self._by_file, self.category_ids = _ids_from_annotations(ann_file, self.class_names)
            for source in sources:  # checked before any image is run, so no result is lost to it later
                self.image_id(source.path, source.name, source.is_video)
        stems = [osp.splitext(osp.basename(s.path))[0] for s in sources]
        self._numeric = (not any(s.is_video for s in sources) and all(stem.isdigit() for stem in stems)
                         and len({int(stem) for stem in stems}) == len(stems))

    def image_id(self, path: str, frame_name: str, is_video: bool) -> int:
        """The id of one image or video frame (see the module docstring for the rules)."""
        if self._by_file is not None:
            key = osp.basename(path)
            if is_video or key not in self._by_file:
                raise InferenceInputError(f'{frame_name if is_video else path!r} is not an image of the '
                                          'annotation file given with --coco-ann (matched by file name)')
            return self._by_file[key]
        if self._numeric:
            return int(osp.splitext(osp.basename(path))[0])
        self._next_id += 1
        return self._next_id - 1

    def add(self, image_id: int, file_name: str, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
            masks: np.ndarray | None) -> None:
        """Add one image's detections.

        Args:
            image_id (int): From :meth:`image_id`.
            file_name (str): What the entry names as its file.
            boxes (np.ndarray): ``(N, 4)`` ``x1, y1, x2, y2``.
            labels (np.ndarray): ``(N,)`` class indices.
            scores (np.ndarray): ``(N,)``.
            masks (np.ndarray, optional): ``(N, H, W)`` booleans.
        """
        from pycocotools import mask as mask_utils
        for i, (box, label, score) in enumerate(zip(boxes, labels, scores)):
            x1, y1, x2, y2 = (float(v) for v in box)
            entry = {'image_id': image_id, 'file_name': file_name, 'category_id': self.category_ids[int(label)],
                     'category_name': self.class_names[int(label)],
                     'bbox': [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                     'score': round(float(score), 5)}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
                entry['segmentation'] = {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode()}
            self.entries.append(entry)

    def write(self, path: str) -> str:
        """Write the entries as a JSON list (through a temporary file, so a crash leaves no half file)."""
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        tmp = f'{path}.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(self.entries, f)
        os.replace(tmp, path)
        return path


def _ids_from_annotations(ann_file: str, class_names: Sequence[str]) -> tuple[dict[str, int], list[int]]:
    from ..evaluation.coco_inputs import CocoEvalError, read_json
    try:
        data = read_json(ann_file, 'annotation file')
    except CocoEvalError as err:
        raise InferenceInputError(str(err)) from None
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
            or not isinstance(data.get('categories'), list):
        raise InferenceInputError(f'annotation file {ann_file!r} must be a COCO instances file with lists '
                                  '"images" and "categories"')
    by_file = {osp.basename(img['file_name']): img['id'] for img in data['images']
               if isinstance(img, dict) and 'file_name' in img and 'id' in img}
    by_name = {cat.get('name'): cat.get('id') for cat in data['categories'] if isinstance(cat, dict)}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        raise InferenceInputError(f'annotation file {ann_file!r} has no category named {missing} (the model\'s '
                                  f'classes are {list(class_names)}; its categories {sorted(map(str, by_name))})')
    return by_file, [by_name[name] for name in class_names]
