"""Let mmengine resume its own checkpoints under torch >= 2.6 without turning safety off.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, which refuses mmengine 0.10.7's
checkpoints: their message hub holds ``HistoryBuffer`` objects whose pickled state refers to their own
methods through ``getattr``, and numpy arrays and scalars. Allow-listing ``getattr`` in torch would let
any file look up any attribute, and ``weights_only=False`` would run any code a file carries. Instead,
local checkpoints are read by a restricted unpickler: torch's own weights-only allow-list, plus
``HistoryBuffer`` and numpy's array and scalar constructors, plus a ``getattr`` that only looks up
public methods of ``HistoryBuffer``. Anything else in a file is refused with the name of the global.
It is plugged in through mmengine's own extension point, ``CheckpointLoader.register_scheme``.
"""
from __future__ import annotations

import functools
import os.path as osp
import pickle
import types
from typing import Any

import torch

from ..compat import safe_globals


@functools.cache
def _allowed_globals() -> dict[str, Any]:
    import numpy as np
    from mmengine.logging import HistoryBuffer
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for obj in safe_globals():  # what the user allow-listed in torch (torch >= 2.5)
        if isinstance(obj, tuple):
            obj, name = obj
        else:
            name = f'{obj.__module__}.{obj.__qualname__}'
        allowed[name] = obj
    core = np._core if hasattr(np, '_core') else np.core
    for obj in (np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar, HistoryBuffer):
        allowed[f'{obj.__module__}.{obj.__qualname__}'] = obj
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # files written by numpy 1 or 2
        allowed[f'{module}._reconstruct'] = core.multiarray._reconstruct
        allowed[f'{module}.scalar'] = core.multiarray.scalar
    for dtype in set(np.sctypeDict.values()):
        dtype_class = type(np.dtype(dtype))
        allowed[f'{dtype_class.__module__}.{dtype_class.__qualname__}'] = dtype_class
    return allowed


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and not name.startswith('_'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'checkpoint asks for getattr({obj!r}, {name!r}); only public '
                                 'HistoryBuffer methods may be looked up')


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only tensors, containers, numpy values and mmengine's HistoryBuffer."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ('builtins', '__builtin__') and name == 'getattr':
            return _history_buffer_getattr
        obj = _allowed_globals().get(f'{module}.{name}')
        if obj is None:
            raise pickle.UnpicklingError(f'checkpoint needs {module}.{name}, which is not on the allow-list '
                                         'of tensors, numpy values and mmengine HistoryBuffer')
        return obj


restricted_pickle = types.SimpleNamespace(__name__='restricted_pickle', Unpickler=RestrictedUnpickler,
                                          load=lambda f, **kw: RestrictedUnpickler(f, **kw).load())


def load_local_checkpoint(filename: str, map_location: Any = None) -> Any:
    """Read an mmengine checkpoint from a local file through :class:`RestrictedUnpickler`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False, pickle_module=restricted_pickle)


@functools.cache
def allow_mmengine_checkpoints() -> None:
    """Make mmengine read local checkpoints with :func:`load_local_checkpoint` (once)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
