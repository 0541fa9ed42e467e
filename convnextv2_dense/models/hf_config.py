"""HF transformers' ``ConvNextV2Config`` read as our constructor arguments (no transformers import).

Every architecture field is honoured or refused by name:

==================== ======================================================================
HF field             ours
==================== ======================================================================
num_channels         ``in_channels``
patch_size           ``patch_size``
num_stages           must equal ``len(depths) == len(hidden_sizes)`` (HF builds ``num_stages``
                     stages but names ``len(depths)``; a disagreement is refused)
hidden_sizes         ``dims``
depths               ``depths``
hidden_act           ``act`` (the names of :data:`~.activations.ACTIVATIONS`; others refused)
layer_norm_eps       the classifier's ``head_norm_eps``: HF uses it only for the pooled LayerNorm
                     (every other LayerNorm, and the backbone's output norms, use 1e-6)
initializer_range    ``init_std``
drop_path_rate       ``drop_path_rate``
out_features /       the backbone's selection, HF's ``out_indices`` translated (HF: 0 is the
out_indices          stem; ours: 0 is stage1), so it is passed on as ``out_features`` names
num_labels/id2label  the classifier's ``num_classes``
image_size           ignored knowingly: HF's model does not use it either (any input size runs)
==================== ======================================================================
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .activations import ACTIVATIONS
from .stage_selection import hf_out_features, select_stages, stage_names

#: ConvNextV2Config's defaults, used for fields a config dict leaves out.
HF_DEFAULTS: dict[str, Any] = dict(num_channels=3, patch_size=4, num_stages=4, hidden_sizes=[96, 192, 384, 768],
                                   depths=[3, 3, 9, 3], hidden_act='gelu', initializer_range=0.02,
                                   layer_norm_eps=1e-12, drop_path_rate=0.0, image_size=224)
HFConfig = Any  # a transformers ConvNextV2Config, its dict, or a path to config.json or its folder


def read_hf_config(config: HFConfig, where: str | None = None) -> tuple[dict, str]:
    """The config as a plain dict, and a name for it in messages.

    Args:
        config (ConvNextV2Config | Mapping | str | PathLike): An HF config object (anything with
            ``to_dict()``), its dict, or the path of a ``config.json`` or of the folder holding one.
        where (str, optional): Names the config in messages. Defaults to None (its type or path).

    Returns:
        tuple[dict, str]: The fields, and where they came from.
    """
    fields, name = _read(config)
    return fields, where or name


def _read(config: HFConfig) -> tuple[dict, str]:
    if hasattr(config, 'to_dict') and not isinstance(config, Mapping):
        return dict(config.to_dict()), type(config).__name__
    if isinstance(config, Mapping):
        return dict(config), 'the HF config dict'
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / 'config.json'
        if not path.is_file():
            raise ValueError(f'{path}: no such HF config.json')
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as err:
            raise ValueError(f'{path} is not valid JSON: {err}') from err
    raise ValueError('config must be a ConvNextV2Config, a dict, or the path of a config.json (or its folder), '
                     f'got {type(config).__name__}')


def _field(config: Mapping, name: str, where: str, check, expected: str) -> Any:
    value = config.get(name, HF_DEFAULTS.get(name))
    if not check(value):
        raise ValueError(f'{where}: {name}={value!r} cannot be honoured; expected {expected}')
    return value


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_ints(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(_positive_int(v) for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def hf_arch_kwargs(config: HFConfig, where: str | None = None) -> dict:
    """The constructor arguments both model classes share, from an HF ConvNeXt V2 config.

    Args:
        config (ConvNextV2Config | Mapping | str | PathLike): See :func:`read_hf_config`.
        where (str, optional): Names the config in messages. Defaults to None.

    Returns:
        dict: ``depths``, ``dims``, ``in_channels``, ``patch_size``, ``act``, ``drop_path_rate`` and
        ``init_std``.

    Raises:
        ValueError: A field we cannot honour, named with its value and what is allowed.
    """
    fields, where = read_hf_config(config, where)
    model_type = fields.get('model_type', 'convnextv2')
    if model_type != 'convnextv2':
        raise ValueError(f"{where}: model_type={model_type!r} is not a ConvNeXt V2 config (expected 'convnextv2')")
    depths = _field(fields, 'depths', where, _positive_ints, 'a list of positive integers')
    dims = _field(fields, 'hidden_sizes', where, _positive_ints, 'a list of positive integers')
    num_stages = _field(fields, 'num_stages', where, _positive_int, 'a positive integer')
    if not num_stages == len(depths) == len(dims):
        raise ValueError(f'{where}: num_stages={num_stages}, depths={list(depths)} and hidden_sizes={list(dims)} '
                         'cannot be honoured; they must describe the same number of stages')
    act = _field(fields, 'hidden_act', where, lambda v: isinstance(v, str) and v in ACTIVATIONS,
                 f'one of {", ".join(ACTIVATIONS)}')
    return dict(
        depths=tuple(depths), dims=tuple(dims), act=act,
        in_channels=_field(fields, 'num_channels', where, _positive_int, 'a positive integer'),
        patch_size=_field(fields, 'patch_size', where, _positive_int, 'a positive integer'),
        drop_path_rate=float(_field(fields, 'drop_path_rate', where, lambda v: _number(v) and 0 <= v < 1,
                                    'a number in [0, 1)')),
        init_std=float(_field(fields, 'initializer_range', where, lambda v: _number(v) and v > 0,
                              'a positive number')))


def hf_head_norm_eps(config: HFConfig, where: str | None = None) -> float:
    """HF's ``layer_norm_eps``: the epsilon of the pooled LayerNorm (our classifier's ``head_norm_eps``)."""
    fields, where = read_hf_config(config, where)
    return float(_field(fields, 'layer_norm_eps', where, lambda v: _number(v) and v > 0, 'a positive number'))


def hf_num_labels(config: HFConfig, where: str | None = None) -> int:
    """The number of classes of an HF classification config (``num_labels``, else ``id2label``)."""
    fields, where = read_hf_config(config, where)
    value = fields.get('num_labels', len(fields.get('id2label') or {}) or 2)
    if not _positive_int(value):
        raise ValueError(f'{where}: num_labels={value!r} cannot be honoured; expected a positive integer')
    return value


def hf_out_features_of(config: HFConfig, where: str | None = None) -> list[str]:
    """The backbone selection of an HF config as stage names (HF's default: the last stage).

    HF's ``out_indices`` count the stem as 0; they are translated to names here, so ``out_indices=[0, 2]``
    in a ``config.json`` becomes ``out_features=['stem', 'stage2']``.
    """
    fields, where = read_hf_config(config, where)
    names = stage_names(len(hf_arch_kwargs(fields, where)['depths']))
    features, indices = fields.get('out_features'), fields.get('out_indices')
    try:
        from_indices = None if indices is None else hf_out_features(indices, names)
        if features is not None and from_indices is not None and list(features) != from_indices:
            raise ValueError(f'out_features {list(features)!r} and out_indices {list(indices)!r} (HF convention: '
                             f'0 = stem) name different stages ({from_indices!r})')
        chosen = features if features is not None else from_indices
        return list(select_stages(chosen, None, names)) if chosen is not None else [names[-1]]
    except ValueError as err:
        raise ValueError(f'{where}: {err}') from err
