"""Let mmengine resume its own checkpoints under torch >= 2.6 without turning safety off.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True`` and refuses any class it does not
know; mmengine 0.10.7 checkpoints carry a few of its own (``HistoryBuffer`` in the message hub) and
numpy scalars and arrays in the logged scalars. Instead of ``weights_only=False`` everywhere, we add
exactly those classes to torch's allow-list, so a checkpoint that carries anything else is still refused.
"""
from __future__ import annotations

import functools

import numpy as np
import torch


def _numpy_globals() -> list:
    dtypes = {type(np.dtype(name)) for name in (
        'float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8', 'bool')}
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, '_core') else np.core.multiarray._reconstruct
    scalar = np._core.multiarray.scalar if hasattr(np, '_core') else np.core.multiarray.scalar
    return [np.ndarray, np.dtype, reconstruct, scalar, *sorted(dtypes, key=str)]


@functools.cache
def allow_mmengine_checkpoints() -> None:
    """Add mmengine's and numpy's checkpoint classes to ``torch.serialization``'s safe globals (once)."""
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4 loads everything anyway
        return
    from mmengine.logging import HistoryBuffer
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])
