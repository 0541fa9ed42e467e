"""Reading mmengine checkpoints without running code from them: what is allowed, and where it is on.

Since torch 2.6, ``torch.load`` reads with ``weights_only=True`` by default: tensors, containers and
plain values, nothing that could run code. A checkpoint written by stock mmengine 0.10.7 holds more: its
message hub keeps ``HistoryBuffer`` objects (whose pickled state names their statistics methods through
``getattr(HistoryBuffer, 'mean')``) and numpy arrays, scalars and dtypes. mmengine itself reads local files
with torch's default and http(s) files with ``weights_only=False``, which runs whatever a file carries.

:func:`safe_checkpoint_loading` replaces both, and only while it is active, by one rule: torch's
weights-only unpickler with this allow-list added through torch's public API
(``torch.serialization.safe_globals``; before torch 2.6, :func:`..compat.load_weights_only` applies
the same rules):

- ``mmengine.logging.HistoryBuffer``;
- numpy's ``ndarray``, ``dtype`` and its per-type classes, the array reconstructor and the scalar
  constructor (under numpy 1's and numpy 2's module names);
- ``builtins.getattr``, stood in for by a function that looks up public attributes of ``HistoryBuffer``
  and nothing else.

Anything else in a file is refused with :class:`UnsafeCheckpointError`, which names the file, what it
asked for, and the switch that loads a trusted file anyway. Importing the package turns nothing on:
``tools/train.py`` and ``tools/test.py`` wrap the runner in it (``--trust-checkpoint`` is their switch),
and Python code can do the same. Checkpoints written by our tools need none of it: they hold only what
torch's default reads (:mod:`.checkpoint_saving`).
"""
from __future__ import annotations

import functools
import os.path as osp
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..compat import load_weights_only
from ..weights.io import CheckpointError, download

HTTP_PREFIXES: tuple[str, ...] = ('http://', 'https://')
PYTHON_SWITCH = 'safe_checkpoint_loading(trust=True)'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asks to build or call something outside the allow-list; the message names it."""


@functools.cache
def mmengine_safe_globals() -> tuple[Any, ...]:
    """What :func:`safe_checkpoint_loading` adds to torch's weights-only allow-list (see the module doc).

    Returns:
        tuple: Entries for ``torch.serialization.safe_globals``: objects, or ``(object, name)`` pairs
        for an object stored under another name.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    core = np._core if hasattr(np, '_core') else np.core
    allowed: list[Any] = [HistoryBuffer, np.ndarray, np.dtype, (history_buffer_getattr, 'builtins.getattr')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # files written by numpy 1 or 2
        allowed += [(core.multiarray._reconstruct, f'{module}._reconstruct'),
                    (core.multiarray.scalar, f'{module}.scalar')]
    allowed += sorted({type(np.dtype(t)) for t in np.sctypeDict.values()}, key=lambda c: c.__qualname__)
    return tuple(allowed)


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to public attributes of ``HistoryBuffer`` (how it pickles its methods)."""
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and not name.startswith('_'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}): only public HistoryBuffer methods may be '
                                 'looked up')


def load_checkpoint_file(path: str, map_location: Any = None, *, source: str | None = None,
                         trust: bool = False, switch: str = PYTHON_SWITCH) -> Any:
    """``torch.load`` one local file by the rule above.

    Args:
        path (str): A local file written by ``torch.save``.
        map_location (Any): As for ``torch.load``. Defaults to None.
        source (str, optional): What the user gave (a URL), for messages. Defaults to None: ``path``.
        trust (bool): Unpickle everything (``weights_only=False``): only for files you trust.
            Defaults to False.
        switch (str): How the user turns ``trust`` on, named in the refusal. Defaults to
            ``'safe_checkpoint_loading(trust=True)'``.

    Returns:
        Any: What the file holds.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: The file asks for something outside the allow-list.
        CheckpointError: The file is truncated, corrupt, or not written by ``torch.save``.
    """
    source = source or path
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {source} does not exist')
    with open(path, 'rb') as f:
        head = f.read(2)
    if not (head == b'PK' or head[:1] == b'\x80'):  # torch.save's zip archive, or a legacy pickle
        raise CheckpointError(f'{source} is not a readable PyTorch checkpoint: it starts with {head!r}, not '
                              'like a file written by torch.save')
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return load_weights_only(path, map_location, mmengine_safe_globals())
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        refusal = _refusal(err)
        if refusal is None:
            raise CheckpointError(f'{source} is not a readable PyTorch checkpoint (truncated or corrupt?): '
                                  f'{type(err).__name__}: {" ".join(str(err).split())[:300]}') from err
        raise UnsafeCheckpointError(
            f'refused to load {source}: {refusal}. Only tensors, containers, numpy values and mmengine '
            'HistoryBuffers are read from a checkpoint, as anything else could run code while unpickled. '
            f'If you trust this file, load it with {switch}') from err


def _refusal(err: Exception) -> str | None:
    """The line of torch's weights-only message that says what was refused, or None for other failures."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for marker in ('GLOBAL', 'getattr(', 'Trying to', 'Can only'):
        line = next((line for line in lines if marker in line), None)
        if line is not None:
            return line.split('error: ', 1)[-1].rstrip('.')
    return None


def _local_loader(trust: bool, switch: str) -> Callable[[str, Any], Any]:
    def load_from_local_safely(filename: str, map_location: Any = None) -> Any:
        return load_checkpoint_file(filename, map_location, trust=trust, switch=switch)
    return load_from_local_safely


def _http_loader(trust: bool, switch: str) -> Callable[[str, Any], Any]:
    def load_from_http_safely(url: str, map_location: Any = None) -> Any:
        from mmengine.dist import barrier, get_dist_info
        rank, world_size = get_dist_info()
        if rank == 0:  # one download per machine's cache, as mmengine does; the others read the file
            path = download(url)
        if world_size > 1:
            barrier()
            if rank > 0:
                path = download(url, progress=False)
        return load_checkpoint_file(str(path), map_location, source=url, trust=trust, switch=switch)
    return load_from_http_safely


@contextmanager
def safe_checkpoint_loading(trust: bool = False, switch: str = PYTHON_SWITCH) -> Iterator[None]:
    """Make mmengine read local and http(s) checkpoints by the rule above while the block runs.

    This covers every checkpoint mmengine reads: ``load_from``, ``resume``, ``Runner.load_checkpoint``,
    ``mmengine.runner.load_checkpoint`` and inferencers' ``weights``. The previous loaders come back on
    exit. URLs are downloaded once into ``~/.cache/convnextv2_dense`` (``$CONVNEXTV2_CACHE``).

    Args:
        trust (bool): Unpickle everything instead (``weights_only=False``). Defaults to False.
        switch (str): How the user turns ``trust`` on, named when a file is refused. Defaults to
            ``'safe_checkpoint_loading(trust=True)'``.

    Example:
        >>> with safe_checkpoint_loading():
        ...     runner.train()   # --resume / load_from read through the allow-list
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    ours = {'': _local_loader(trust, switch), HTTP_PREFIXES: _http_loader(trust, switch)}
    before = {prefix: CheckpointLoader._schemes.get(prefix) for prefix in ('', *HTTP_PREFIXES)}
    for prefixes, loader in ours.items():
        CheckpointLoader.register_scheme(prefixes, loader=loader, force=True)
    try:
        yield
    finally:
        for prefix, loader in before.items():
            if loader is None:
                CheckpointLoader._schemes.pop(prefix, None)
            else:
                CheckpointLoader.register_scheme(prefix, loader=loader, force=True)
