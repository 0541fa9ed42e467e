"""Bad data, named: dataset paths checked before anything is built, and a failing sample's files named.

:func:`check_data_paths` reads only the config, so ``tools/train.py`` and ``tools/test.py`` call it before
the runner builds a model. :func:`name_failing_samples` wraps the pipelines of built datasets so that an
image that is missing or cannot be decoded (which mmcv reports as a bare ``cv2.error`` or a
``NoneType`` attribute error) becomes a :class:`SampleError` naming the sample's files.
"""
from __future__ import annotations

import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

SAMPLE_FILE_KEYS: tuple[str, ...] = ('img_path', 'seg_map_path')


class DataPathError(FileNotFoundError):
    """A dataset folder or annotation file named in the config does not exist; the message names the key."""


class SampleError(RuntimeError):
    """A sample could not be loaded or transformed; the message names its files and the cause."""


def check_data_paths(cfg: Any, keys: Sequence[str]) -> None:
    """Check that the local folders and files the datasets and evaluators name exist.

    Args:
        cfg (Config): The config.
        keys (Sequence[str]): Dataloader and evaluator entries to check, e.g. ``('test_dataloader',
            'test_evaluator')``. Missing or None entries are skipped.

    Raises:
        DataPathError: Naming the config key and the path.
    """
    for key in keys:
        node = cfg.get(key)
        if node is None:
            continue
        if key.endswith('_dataloader'):
            _check_dataset(node.get('dataset'), f'{key}.dataset')
        else:
            for i, evaluator in enumerate(node if isinstance(node, (list, tuple)) else [node]):
                where = f'{key}[{i}]' if isinstance(node, (list, tuple)) else key
                ann = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
                if isinstance(ann, str) and ann and _local(ann) and not osp.isfile(ann):
                    raise DataPathError(f'{where}.ann_file: file {ann!r} does not exist')


def _check_dataset(dataset: Any, where: str) -> None:
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        _check_dataset(dataset['dataset'], f'{where}.dataset')
    for i, inner in enumerate(dataset.get('datasets') or ()):  # ConcatDataset
        _check_dataset(inner, f'{where}.datasets[{i}]')
    if (dataset.get('backend_args') or {}).get('backend') not in (None, 'local'):
        return
    root = dataset.get('data_root') or ''
    if root and _local(root) and not osp.isdir(root):
        raise DataPathError(f'{where}.data_root: folder {root!r} does not exist')
    ann = dataset.get('ann_file') or ''
    if isinstance(ann, str) and ann:
        path = _join(root, ann)
        if _local(path) and not osp.isfile(path):
            raise DataPathError(f'{where}.ann_file: file {path!r} does not exist')
    for name, prefix in (dataset.get('data_prefix') or {}).items():
        if isinstance(prefix, str) and prefix:
            path = _join(root, prefix)
            if _local(path) and not osp.isdir(path):
                raise DataPathError(f'{where}.data_prefix.{name}: folder {path!r} does not exist')


def _join(root: str, path: str) -> str:
    return path if osp.isabs(path) or not root or not _local(path) else osp.join(root, path)


def _local(path: str) -> bool:
    return '://' not in path


class NamedSampleErrors:
    """Runs a dataset's pipeline; an error becomes a :class:`SampleError` naming the sample's files.

    Args:
        pipeline (Callable): The dataset's own pipeline.
    """

    def __init__(self, pipeline: Callable[[dict], Any]) -> None:
        self.pipeline = pipeline

    def __call__(self, results: dict) -> Any:
        files = [results[k] for k in SAMPLE_FILE_KEYS if isinstance(results.get(k), str)]
        try:
            return self.pipeline(results)
        except Exception as err:  # noqa: BLE001 - any failure gets the sample's files added
            cause = ' '.join(str(err).split()) or 'no message'
            raise SampleError(f'cannot load or transform the sample {" + ".join(files) or "(no file names)"}: '
                              f'{type(err).__name__}: {cause}') from err

    def __getattr__(self, name: str) -> Any:
        if name == 'pipeline':  # not set yet while unpickling in a dataloader worker
            raise AttributeError(name)
        return getattr(self.pipeline, name)


def name_failing_samples(dataset: Any) -> None:
    """Wrap the pipeline of ``dataset`` (and of the datasets it wraps) in :class:`NamedSampleErrors`."""
    for inner in [getattr(dataset, 'dataset', None), *(getattr(dataset, 'datasets', None) or ())]:
        if inner is not None:
            name_failing_samples(inner)
    pipeline = getattr(dataset, 'pipeline', None)
    if callable(pipeline) and not isinstance(pipeline, NamedSampleErrors):
        dataset.pipeline = NamedSampleErrors(pipeline)
