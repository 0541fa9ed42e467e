"""Build an mmseg segmentor or mmdet detector from a config and load a checkpoint into it strictly.

The model is built by mmseg's ``init_model`` / mmdet's ``init_detector`` (so a user's own config behaves
as with mm's own tools); the checkpoint is read by mmengine (a path, an http(s) URL or any prefix
mmengine knows) and must fit the model exactly: a missing, unexpected or mis-shaped tensor is a
:class:`CheckpointMismatchError` that names the keys and shapes, where mmengine would only warn and run
a half-random model. The backbone runs eager unless ``compile=True`` is asked for.
"""
from __future__ import annotations

import os.path as osp
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .sources import InferenceInputError

MAX_LISTED = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model built from the config."""


@dataclass
class LoadedModel:
    """A model ready for inference.

    Args:
        model (nn.Module): The segmentor or detector, in eval mode on its device.
        task (str): ``'seg'`` or ``'det'``.
        classes (tuple[str, ...]): Class names by label index.
        palette (list): One RGB colour per class, or None when the checkpoint and config give none.
        checkpoint (str): What was loaded.
    """

    model: nn.Module
    task: str
    classes: tuple[str, ...]
    palette: list | None
    checkpoint: str


def task_of(cfg: Any, config: str) -> str:
    """``'seg'`` for an mmseg config, ``'det'`` for an mmdet one, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope in ('mmseg', 'mmdet'):
        return 'seg' if scope == 'mmseg' else 'det'
    raise InferenceInputError(f"config {config!r}: default_scope must be 'mmseg' or 'mmdet', got {scope!r}")


def read_config(config: str, cfg_options: dict | None = None, compile: bool = False) -> Any:
    """Read an mm config, apply overrides, and keep the backbone eager unless ``compile`` is asked for.

    Args:
        config (str): The config file, or a model name of ``model-index.yml``.
        cfg_options (dict, optional): ``--cfg-options`` overrides. Defaults to None.
        compile (bool): Leave a backbone's ``compile=True`` on. Defaults to False.

    Returns:
        mmengine.Config: The config.
    """
    import convnextv2_dense  # noqa: F401  (registers the backbone before anything is built)
    from mmengine.config import Config
    from .model_names import resolve_config
    cfg = Config.fromfile(resolve_config(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    backbone = cfg.get('model', {}).get('backbone')
    if backbone is not None and backbone.get('compile') and not compile:
        backbone['compile'] = False
    return cfg


def read_state_dict(checkpoint: str, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tensors (``state_dict`` wrapper and ``module.`` prefixes removed) and its meta.

    Local and http(s) files are read through :func:`~convnextv2_dense.mm.checkpoint_safety.safe_checkpoint_loading`
    (tensors, containers, numpy values and mmengine HistoryBuffers only), as ``tools/test.py`` does.

    Args:
        checkpoint (str): A path, an http(s) URL or any source mmengine's ``CheckpointLoader`` reads.
        trust (bool): Unpickle everything (``--trust-checkpoint``): only for files you trust.
            Defaults to False.

    Returns:
        tuple[dict, dict]: The state dict and the ``meta`` entry (empty when absent).
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from ..mm.checkpoint_safety import safe_checkpoint_loading
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise InferenceInputError(f'checkpoint not found: {checkpoint!r}')
    with safe_checkpoint_loading(trust=trust, switch='--trust-checkpoint'):
        loaded = _load_checkpoint(checkpoint, map_location='cpu')
    if not isinstance(loaded, dict):
        raise CheckpointMismatchError(f'checkpoint {checkpoint!r} holds a {type(loaded).__name__}, not a dict '
                                      'of tensors')
    state = loaded.get('state_dict', loaded)
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()
             if isinstance(v, torch.Tensor)}
    meta = loaded.get('meta') if isinstance(loaded.get('meta'), dict) else {}
    return state, meta


def check_fit(model: nn.Module, state: dict[str, torch.Tensor], checkpoint: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the model's tensors and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f'{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}'
             for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for what, keys in (('missing from the checkpoint', missing), ('not in the model', unexpected),
                       ('of the wrong shape', wrong)):
        if keys:
            listed = ', '.join(keys[:MAX_LISTED])
            if len(keys) > MAX_LISTED:
                modules = {}
                for key in keys:
                    modules[key.split('.')[0]] = modules.get(key.split('.')[0], 0) + 1
                listed += ', ... (by module: ' + ', '.join(f'{m} {n}' for m, n in modules.items()) + ')'
            problems.append(f'{len(keys)} tensors {what}: {listed}')
    if problems:
        raise CheckpointMismatchError(f'checkpoint {checkpoint!r} does not fit the model of the config:\n  '
                                      + '\n  '.join(problems))


def _class_names(cfg: Any, meta: dict, num_classes: int | None) -> tuple[tuple[str, ...], list | None]:
    dataset_meta = meta.get('dataset_meta') or {}
    classes, palette = dataset_meta.get('classes'), dataset_meta.get('palette')
    if classes is None:
        metainfo = cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {}
        classes, palette = metainfo.get('classes'), metainfo.get('palette', palette)
    if classes is None and num_classes is not None:
        classes = tuple(f'class{i}' for i in range(num_classes))
    return tuple(classes or ()), palette


def _num_classes(model: nn.Module, task: str) -> int | None:
    if task == 'seg':
        return getattr(getattr(model, 'decode_head', None), 'num_classes', None)
    head = getattr(getattr(model, 'roi_head', None), 'bbox_head', None)
    head = head[-1] if isinstance(head, nn.ModuleList) else head
    return getattr(head or getattr(model, 'bbox_head', None), 'num_classes', None)


def load_model(config: str, checkpoint: str, device: str = 'cpu', cfg_options: dict | None = None,
               compile: bool = False, trust: bool = False) -> LoadedModel:
    """Build the config's model with mm's own init function and load ``checkpoint`` strictly.

    Args:
        config (str): An mmseg or mmdet config file, or a model name of ``model-index.yml``.
        checkpoint (str): A path, URL or anything mmengine's checkpoint loader reads.
        device (str): ``'cpu'``, ``'cuda'``, ``'cuda:1'``... Defaults to 'cpu'.
        cfg_options (dict, optional): Config overrides. Defaults to None.
        compile (bool): Keep a backbone's ``torch.compile``. Defaults to False (eager).
        trust (bool): Unpickle the checkpoint completely (only for files you trust). Defaults to False.

    Returns:
        LoadedModel: The model in eval mode, with its class names and palette.
    """
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise InferenceInputError(f'--device {device}: this PyTorch sees no CUDA device; use --device cpu')
    cfg = read_config(config, cfg_options, compile)
    task = task_of(cfg, config)
    # mm's init functions warn about things that concern training (loss defaults, deprecated builders) and
    # that no checkpoint was given (it is loaded below, strictly); they also reset the warning filters.
    with warnings.catch_warnings(record=True):
        if task == 'seg':
            from mmseg.apis import init_model
            if 'test_pipeline' not in cfg:
                cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
            model = init_model(cfg, None, device='cpu')
        else:
            from mmdet.apis import init_detector
            model = init_detector(cfg, None, device='cpu')
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)  # SyncBN needs a process group; eval BN is the same computation
    state, meta = read_state_dict(checkpoint, trust)
    check_fit(model, state, checkpoint)
    model.load_state_dict(state, strict=True)
    classes, palette = _class_names(cfg, meta, _num_classes(model, task))
    model.dataset_meta = {'classes': classes, 'palette': palette}
    model.to(device).eval()
    return LoadedModel(model, task, classes, palette, checkpoint)
