"""Read and check COCO annotation and results files before pycocotools sees them.

pycocotools checks its inputs with bare ``assert`` statements (``'Results do not correspond to current
coco set'``) or not at all (unknown category ids are silently dropped). Here every problem is raised
once, as :class:`CocoEvalError`, with the file and what is wrong in the message. Only stdlib and
pycocotools are imported.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycocotools.coco import COCO

IOU_TYPES: tuple[str, ...] = ('bbox', 'segm')
MAX_LISTED = 5  # how many offending ids or entries an error message lists


class CocoEvalError(ValueError):
    """A problem with a user's input; the message names the file and the problem."""


@dataclass(frozen=True)
class ResultsFile:
    """The checked detections of one results file.

    Args:
        path (str): The file the detections were read from.
        iou_type (str): ``'segm'`` when the entries carry ``segmentation``, else ``'bbox'``.
        detections (tuple[dict]): The entries in file order, as read.
    """

    path: str
    iou_type: str
    detections: tuple[dict[str, Any], ...]


def _few(items: Iterable[Any]) -> str:
    """``'1, 2, 3, ... (7 in all)'`` for an error message."""
    items = sorted(set(items), key=lambda v: (type(v).__name__, v))
    shown = ', '.join(repr(i) for i in items[:MAX_LISTED])
    return shown if len(items) <= MAX_LISTED else f'{shown}, ... ({len(items)} in all)'


def _json_kind(value: Any) -> str:
    names = {dict: 'object', list: 'list', str: 'string', bool: 'boolean', type(None): 'null'}
    return names.get(type(value), 'number')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: str, what: str) -> Any:
    """Load a JSON file, turning every way it can fail into a :class:`CocoEvalError`.

    Args:
        path (str): The file to read.
        what (str): What the file is, for messages (``'annotation file'``, ``'results file'``).

    Returns:
        Any: The decoded JSON value.
    """
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise CocoEvalError(f'{what} {path!r} does not exist') from None
    except OSError as err:
        raise CocoEvalError(f'{what} {path!r} cannot be read: {err.strerror or err}') from None
    except UnicodeDecodeError as err:
        raise CocoEvalError(f'{what} {path!r} is not valid JSON: not UTF-8 text ({err.reason})') from None
    except json.JSONDecodeError as err:
        raise CocoEvalError(f'{what} {path!r} is not valid JSON: {err.msg} at line {err.lineno} '
                            f'column {err.colno}') from None


def _check_records(path: str, records: list, section: str, keys: tuple[str, ...]) -> None:
    """Every record of ``section`` must be an object holding ``keys``."""
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise CocoEvalError(f'annotation file {path!r}: {section}[{i}] must be a JSON object, '
                                f'got a JSON {_json_kind(record)}')
        missing = [k for k in keys if k not in record]
        if missing:
            raise CocoEvalError(f'annotation file {path!r}: {section}[{i}] lacks {missing} '
                                f'(each entry of "{section}" needs {list(keys)})')


def load_annotations(path: str) -> COCO:
    """Read a COCO instances annotation file into a :class:`COCO` object, quietly.

    Args:
        path (str): The ground-truth file, e.g. ``instances_val2017.json``.

    Returns:
        COCO: The indexed ground truth.
    """
    data = read_json(path, 'annotation file')
    if not isinstance(data, dict):
        raise CocoEvalError(f'annotation file {path!r} must be a JSON object with "images", "annotations" '
                            f'and "categories", got a JSON {_json_kind(data)}')
    for section in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(section), list):
            problem = 'lacks' if section not in data else 'needs a list as'
            raise CocoEvalError(f'annotation file {path!r} {problem} "{section}" (a COCO instances file '
                                f'has lists "images", "annotations" and "categories")')
    _check_records(path, data['images'], 'images', ('id',))
    _check_records(path, data['categories'], 'categories', ('id', 'name'))
    _check_records(path, data['annotations'], 'annotations',
                   ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd'))
    for section in ('images', 'categories'):
        if not data[section]:
            raise CocoEvalError(f'annotation file {path!r} has no {section}')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_segm_ground_truth(coco: COCO, path: str) -> None:
    """Mask evaluation needs ``segmentation`` on every annotation and the size of every image.

    Args:
        coco (COCO): Ground truth from :func:`load_annotations`.
        path (str): Its file, for messages.
    """
    no_size = [i for i, img in coco.imgs.items() if 'height' not in img or 'width' not in img]
    if no_size:
        raise CocoEvalError(f'annotation file {path!r}: segm evaluation needs "height" and "width" on every '
                            f'image; images {_few(no_size)} lack them')
    no_segm = [i for i, ann in coco.anns.items() if 'segmentation' not in ann]
    if no_segm:
        raise CocoEvalError(f'annotation file {path!r}: segm evaluation needs "segmentation" on every '
                            f'annotation; annotations with ids {_few(no_segm)} lack it')


def _results_type(path: str, entries: list) -> str:
    """``'segm'`` when every entry has ``segmentation``, ``'bbox'`` when every entry has ``bbox``."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoEvalError(f'results file {path!r}: entry {i} must be a JSON object, '
                                f'got a JSON {_json_kind(entry)}')
    with_segm = [i for i, entry in enumerate(entries) if 'segmentation' in entry]
    if with_segm and len(with_segm) < len(entries):
        without = next(i for i, entry in enumerate(entries) if 'segmentation' not in entry)
        raise CocoEvalError(f'results file {path!r} mixes types: entry {with_segm[0]} has "segmentation" '
                            f'(segm) but entry {without} has not; write bbox and segm results to separate '
                            f'files, as mmdet does (results.bbox.json, results.segm.json)')
    if with_segm:
        return 'segm'
    unknown = [i for i, entry in enumerate(entries) if 'bbox' not in entry]
    if unknown:
        keys = sorted(entries[unknown[0]])
        raise CocoEvalError(f'results file {path!r}: entry {unknown[0]} is of an unknown type: it has neither '
                            f'"bbox" nor "segmentation" (keys {keys}); only bbox and segm results can be '
                            f'evaluated')
    return 'bbox'


def _rle_problem(segm: Any, image: dict) -> str | None:
    if not isinstance(segm, dict) or 'counts' not in segm or 'size' not in segm:
        return ('"segmentation" must be RLE, an object with "size" [height, width] and "counts" '
                '(polygons are not accepted as results)')
    size = segm['size']
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return f'RLE "size" must be [height, width], got {size!r}'
    if not isinstance(segm['counts'], (str, list)):
        return f'RLE "counts" must be a string or a list of run lengths, got a JSON {_json_kind(segm["counts"])}'
    expected = [image.get('height'), image.get('width')]
    if None not in expected and size != expected:
        return f'RLE "size" {size} does not match image {image["id"]!r} of size [height, width] = {expected}'
    return None


def _entry_problem(entry: dict, iou_type: str, coco_gt: COCO) -> str | None:
    """What is wrong with one detection, or ``None``."""
    missing = [k for k in ('image_id', 'category_id', 'score') if k not in entry]
    if missing:
        return f'lacks {missing}'
    for key, known in (('image_id', coco_gt.imgs), ('category_id', coco_gt.cats)):
        if not isinstance(entry[key], (int, str)) or entry[key] not in known:
            return f'"{key}" {entry[key]!r} is not an id of the annotations'
    if not _is_number(entry['score']):
        return f'"score" must be a number, got {entry["score"]!r}'
    box = entry.get('bbox')
    if box is not None or iou_type == 'bbox':
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            return f'"bbox" must be [x, y, width, height] (4 numbers), got {box!r}'
    if iou_type == 'segm':
        return _rle_problem(entry['segmentation'], coco_gt.imgs[entry['image_id']])
    return None


def _unknown_ids(path: str, entries: list, key: str, known: dict) -> None:
    """List a few of the ``key`` values that the annotations do not define."""
    unknown = {e[key] for e in entries if isinstance(e.get(key), (int, str)) and e[key] not in known}
    if unknown:
        what = key.replace('_id', '')
        raise CocoEvalError(f'results file {path!r} names {what} ids absent from the annotations: '
                            f'{_few(unknown)} (the annotations define {len(known)} {what} ids)')


def load_results(path: str, coco_gt: COCO) -> ResultsFile:
    """Read one results file, tell its type from its content and check it against the ground truth.

    A file whose entries carry ``segmentation`` (compressed RLE, ``counts`` as str as mmdet writes it, or
    uncompressed) holds segm results, one whose entries carry only ``bbox`` holds bbox results.

    Args:
        path (str): A COCO results file, e.g. mmdet's ``results.bbox.json`` or ``results.segm.json``.
        coco_gt (COCO): Ground truth from :func:`load_annotations`.

    Returns:
        ResultsFile: The checked detections and their type.
    """
    entries = read_json(path, 'results file')
    if not isinstance(entries, list):
        raise CocoEvalError(f'results file {path!r} must be a JSON list of detections, '
                            f'got a JSON {_json_kind(entries)}')
    if not entries:
        raise CocoEvalError(f'results file {path!r} holds 0 detections (an empty list); nothing to evaluate')
    iou_type = _results_type(path, entries)
    _unknown_ids(path, entries, 'image_id', coco_gt.imgs)
    _unknown_ids(path, entries, 'category_id', coco_gt.cats)
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry, iou_type, coco_gt)
        if problem is not None:
            raise CocoEvalError(f'results file {path!r}: entry {i} ({iou_type} results): {problem}')
    return ResultsFile(path=path, iou_type=iou_type, detections=tuple(entries))
