"""Small synthetic datasets in the ADE20K and COCO layouts, for demos and smoke tests.

The images are textured backgrounds with one to four randomly coloured shapes (drawn in
:mod:`.drawing`); only the outline tells the shape kinds apart. The files follow the real datasets'
layouts and conventions, so the stock ``mmseg.datasets.ADE20KDataset`` (with
``metainfo=dict(classes=DEMO_SEG_CLASSES)``) and ``mmdet.datasets.CocoDataset`` (with
``metainfo=dict(classes=DEMO_DET_CLASSES)``) read them unchanged:

- ``ROOT/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_{train,val}_%08d``
  ``.jpg`` / ``.png``: label 0 is "other" (ignored), label k is the k-th ADE20K class.
- ``ROOT/coco/{train2017,val2017}/%012d.jpg`` and ``ROOT/coco/annotations/instances_{train,val}2017``
  ``.json`` with polygon masks; the first validation image holds no objects.

Generation is deterministic in ``seed`` (each image has its own random stream, so image ``i`` does not
depend on how many images are made), writes to a temporary sibling directory that is renamed into
place only when complete, and is skipped when a completion marker with the same parameters exists.
Imports numpy, Pillow and pycocotools only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .drawing import Scene, draw_scene, label_map

# Real ADE20K names with their 1-based ids (mmseg's ADE20KDataset order), and the shape each stands for.
DEMO_SEG_CLASSES: tuple[str, ...] = ('wall', 'building', 'sky', 'floor', 'tree')
DEMO_SEG_ADE_IDS: tuple[int, ...] = (1, 2, 3, 4, 5)
DEMO_SEG_SHAPES: tuple[str, ...] = ('background', 'square', 'circle', 'triangle', 'ring')
DEMO_DET_CLASSES: tuple[str, ...] = ('circle', 'square', 'triangle')

MARKER_NAME = 'demo_complete.json'
FORMAT_VERSION = 2
_STREAMS = {'ade': 1, 'coco': 2}
_MAX_SHAPES = 4

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoResult:
    """Where a demo dataset is and whether this call wrote it.

    Args:
        data_root (Path): The directory to use as ``data_root`` in a config.
        written (bool): False if a complete dataset with the same parameters
            was already there and nothing was written.
    """

    data_root: Path
    written: bool


def _check_params(num_train: int, num_val: int, size: int, seed: int) -> None:
    for name, value, low in (('num_train', num_train, 1), ('num_val', num_val, 1), ('size', size, 32),
                             ('seed', seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')


def _rng(seed: int, dataset: str, split: int, index: int) -> np.random.Generator:
    """The random stream of one image, independent of every other image's."""
    return np.random.default_rng((seed, _STREAMS[dataset], split, index))


def _shape_kinds(rng: np.random.Generator, index: int, kinds: Sequence[str]) -> tuple[str, ...]:
    """One to four kinds; the first cycles through ``kinds`` so that every kind appears early."""
    extra = rng.integers(len(kinds), size=int(rng.integers(0, _MAX_SHAPES)))
    return (kinds[index % len(kinds)], ) + tuple(kinds[k] for k in extra)


def _progress(log: Log | None, tag: str, done: int, total: int, start: float) -> None:
    if log is not None and (done == total or done % max(1, total // 4) == 0):
        log(f'[{tag}] {done}/{total} images ({time.perf_counter() - start:.1f}s)')


def _save_jpg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format='JPEG', quality=95)


def _build_atomically(root: Path, params: dict, write: Callable[[Path], None], force: bool,
                      log: Log | None) -> bool:
    """Run ``write`` into a temporary sibling of ``root`` and rename it to ``root`` when done.

    Args:
        root (Path): Final directory.
        params (dict): Generation parameters, stored in the completion marker.
        write (Callable[[Path], None]): Writes the dataset into the directory given.
        force (bool): Rebuild even if an up-to-date marker exists, and replace a
            non-empty directory that has no marker.
        log (Callable[[str], None], optional): Progress messages.

    Returns:
        bool: Whether anything was written.
    """
    marker = root / MARKER_NAME
    if marker.is_file() and not force:
        try:
            if json.loads(marker.read_text())['params'] == params:
                if log is not None:
                    log(f'[{root.name}] up to date: {root}')
                return False
        except (ValueError, KeyError):
            pass
    elif root.exists() and any(root.iterdir()) and not marker.is_file() and not force:
        raise FileExistsError(f'{root} is not empty and was not written by this generator (no {MARKER_NAME}); '
                              'pass force=True (--force) to replace it')
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f'.{root.name}.partial-*'):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.partial-', dir=root.parent))
    try:
        write(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps({'generator': __name__, 'params': params}, indent=2) + '\n')
        if root.exists():
            old = root.with_name(f'.{root.name}.old-{os.getpid()}')
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def make_ade_demo(root: str | os.PathLike, num_train: int = 160, num_val: int = 40, size: int = 128,
                  seed: int = 0, force: bool = False, log: Log | None = print) -> DemoResult:
    """Write a synthetic ADE20K-style segmentation dataset.

    Classes are :data:`DEMO_SEG_CLASSES`, with png values :data:`DEMO_SEG_ADE_IDS` (their real ADE20K
    ids): the background is 'wall' and each shape kind in :data:`DEMO_SEG_SHAPES` is one class. Shapes
    do not touch, so each keeps its outline; shape pixels on a boundary are 0 (ignored), as in
    ADE20K's own annotations.

    Args:
        root (str | os.PathLike): Directory that will hold ``ADEChallengeData2016``
            (the ``data/ade`` of the real dataset).
        num_train (int): Training images. Defaults to 160.
        num_val (int): Validation images. Defaults to 40.
        size (int): Image side in pixels. Defaults to 128.
        seed (int): Random seed. Defaults to 0.
        force (bool): Rewrite even if an up-to-date copy exists. Defaults to False.
        log (Callable[[str], None], optional): Progress messages. Defaults to print.

    Returns:
        DemoResult: ``ROOT/ADEChallengeData2016`` and whether it was written.
    """
    _check_params(num_train, num_val, size, seed)
    root = Path(root)
    params = dict(dataset='ade20k', format_version=FORMAT_VERSION, num_train=num_train, num_val=num_val,
                  size=size, seed=seed)
    class_ids = dict(zip(DEMO_SEG_SHAPES[1:], DEMO_SEG_ADE_IDS[1:]))

    def write(tmp: Path) -> None:
        base = tmp / 'ADEChallengeData2016'
        for split_id, (split, prefix, count) in enumerate(
                (('training', 'train', num_train), ('validation', 'val', num_val))):
            img_dir, ann_dir = base / 'images' / split, base / 'annotations' / split
            img_dir.mkdir(parents=True)
            ann_dir.mkdir(parents=True)
            start = time.perf_counter()
            for i in range(count):
                rng = _rng(seed, 'ade', split_id, i)
                scene = draw_scene(rng, size, _shape_kinds(rng, i, DEMO_SEG_SHAPES[1:]))
                labels = label_map(scene, class_ids, background_id=DEMO_SEG_ADE_IDS[0], ignore_id=0)
                stem = f'ADE_{prefix}_{i + 1:08d}'
                _save_jpg(scene.image, img_dir / f'{stem}.jpg')
                Image.fromarray(labels).save(ann_dir / f'{stem}.png', format='PNG')
                _progress(log, f'ade {split}', i + 1, count, start)

    written = _build_atomically(root, params, write, force, log)
    return DemoResult(root / 'ADEChallengeData2016', written)


def _coco_annotation(shape_polygon: np.ndarray, ann_id: int, image_id: int, category_id: int,
                     size: int) -> dict:
    """One COCO instance annotation from a polygon, with pycocotools' area."""
    poly = np.round(shape_polygon, 2)
    flat = [float(v) for v in poly.ravel()]
    area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([flat], size, size))))
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    bbox = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
    return dict(id=ann_id, image_id=image_id, category_id=category_id, segmentation=[flat], area=area,
                bbox=bbox, iscrowd=0)


def _coco_split(scenes: Sequence[tuple[str, Scene]], size: int, split: str) -> dict:
    """The COCO json of one split from ``(file_name, scene)`` pairs."""
    images, annotations = [], []
    for image_id, (file_name, scene) in enumerate(scenes, start=1):
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for shape in scene.shapes:
            category_id = DEMO_DET_CLASSES.index(shape.kind) + 1
            annotations.append(_coco_annotation(shape.polygon(), len(annotations) + 1, image_id, category_id,
                                                size))
    categories = [dict(id=i, name=name, supercategory='shape') for i, name in enumerate(DEMO_DET_CLASSES, 1)]
    info = dict(description=f'convnextv2_dense synthetic shapes, {split}', version=str(FORMAT_VERSION))
    return dict(info=info, licenses=[], images=images, annotations=annotations, categories=categories)


def make_coco_demo(root: str | os.PathLike, num_train: int = 160, num_val: int = 40, size: int = 128,
                   seed: int = 0, force: bool = False, log: Log | None = print) -> DemoResult:
    """Write a synthetic COCO-style instance segmentation dataset.

    Categories are :data:`DEMO_DET_CLASSES` with ids 1, 2, 3. Instances do not overlap (at least one
    pixel apart), so each polygon is exactly its visible mask. The first validation image is empty.

    Args:
        root (str | os.PathLike): Directory that will hold ``train2017``, ``val2017``
            and ``annotations`` (the ``data/coco`` of the real dataset).
        num_train (int): Training images. Defaults to 160.
        num_val (int): Validation images. Defaults to 40.
        size (int): Image side in pixels. Defaults to 128.
        seed (int): Random seed. Defaults to 0.
        force (bool): Rewrite even if an up-to-date copy exists. Defaults to False.
        log (Callable[[str], None], optional): Progress messages. Defaults to print.

    Returns:
        DemoResult: ``ROOT`` and whether it was written.
    """
    _check_params(num_train, num_val, size, seed)
    root = Path(root)
    params = dict(dataset='coco', format_version=FORMAT_VERSION, num_train=num_train, num_val=num_val,
                  size=size, seed=seed)

    def write(tmp: Path) -> None:
        (tmp / 'annotations').mkdir()
        for split_id, (split, count) in enumerate((('train2017', num_train), ('val2017', num_val))):
            (tmp / split).mkdir()
            start = time.perf_counter()
            scenes = []
            for i in range(count):
                rng = _rng(seed, 'coco', split_id, i)
                empty = split == 'val2017' and i == 0
                kinds = () if empty else _shape_kinds(rng, i, DEMO_DET_CLASSES)
                scene = draw_scene(rng, size, kinds)
                file_name = f'{i + 1:012d}.jpg'
                _save_jpg(scene.image, tmp / split / file_name)
                scenes.append((file_name, scene))
                _progress(log, f'coco {split}', i + 1, count, start)
            ann_file = tmp / 'annotations' / f'instances_{split}.json'
            ann_file.write_text(json.dumps(_coco_split(scenes, size, split)))

    written = _build_atomically(root, params, write, force, log)
    return DemoResult(root, written)


def make_demo_data(out: str | os.PathLike, num_train: int = 160, num_val: int = 40, size: int = 128,
                   seed: int = 0, force: bool = False, datasets: Sequence[str] = ('ade', 'coco'),
                   log: Log | None = print) -> dict[str, DemoResult]:
    """Write the demo datasets under ``out/ade`` and ``out/coco``.

    Args:
        out (str | os.PathLike): Output directory, e.g. ``data/demo``.
        num_train (int): Training images per dataset. Defaults to 160.
        num_val (int): Validation images per dataset. Defaults to 40.
        size (int): Image side in pixels. Defaults to 128.
        seed (int): Random seed. Defaults to 0.
        force (bool): Rewrite even if up-to-date copies exist. Defaults to False.
        datasets (Sequence[str]): Which of 'ade' and 'coco' to write.
            Defaults to ('ade', 'coco').
        log (Callable[[str], None], optional): Progress messages. Defaults to print.

    Returns:
        dict[str, DemoResult]: One result per dataset written or found.
    """
    makers = {'ade': make_ade_demo, 'coco': make_coco_demo}
    unknown = [d for d in datasets if d not in makers]
    if unknown or not datasets:
        raise ValueError(f'datasets must be a non-empty subset of {tuple(makers)}, got {tuple(datasets)!r}')
    out = Path(out)
    return {name: makers[name](out / name, num_train=num_train, num_val=num_val, size=size, seed=seed,
                               force=force, log=log)
            for name in dict.fromkeys(datasets)}
