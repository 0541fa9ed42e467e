"""The torch versions this package supports (torch >= 2.1) and the few places where they differ.

Importing this module checks the installed torch against :data:`MIN_TORCH`, so an older torch fails at
``from convnextv2_dense import ConvNeXtV2`` with both versions named. Imports only torch and the standard
library; every version difference of the package lives here, each with the release that made it moot.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import re
from collections.abc import Sequence
from typing import Any

import torch

MIN_TORCH = (2, 1)
BLOCKED_MODULES = ('sys', 'os', 'posix', 'nt')  # refused outright, not replaced, as torch >= 2.6 does


def version_tuple(version: str) -> tuple[int, int]:
    """``'2.1.0+cu121'`` -> ``(2, 1)``; ``'2.13.0a0+git1234'`` -> ``(2, 13)``."""
    match = re.match(r'(\d+)\.(\d+)', version)
    if match is None:
        raise ValueError(f'cannot read a version number from {version!r}')
    return int(match.group(1)), int(match.group(2))


def check_torch_version(version: str) -> None:
    """Raise ImportError naming both versions if ``version`` is below :data:`MIN_TORCH`.

    Args:
        version (str): A torch version string, such as ``torch.__version__``.
    """
    if version_tuple(version) < MIN_TORCH:
        floor = '.'.join(map(str, MIN_TORCH))
        raise ImportError(f'convnextv2_dense needs torch>={floor}, but torch {version} is installed; '
                          f'upgrade it (pip install "torch>={floor}")')


check_torch_version(torch.__version__)
TORCH = version_tuple(torch.__version__)

from torch.fx import _symbolic_trace as _fx  # noqa: E402 - after the version check

# torch.fx.symbolic_trace in progress; newer torch names it so (its is_fx_tracing warns and covers export too)
_is_fx_symbolic_tracing = getattr(_fx, 'is_fx_symbolic_tracing', _fx.is_fx_tracing)


def is_compiling() -> bool:
    """True while dynamo (``torch.compile``, ``torch.export``) traces the calling code."""
    if hasattr(torch.compiler, 'is_compiling'):  # torch >= 2.3
        return torch.compiler.is_compiling()
    from torch._dynamo import is_compiling as dynamo_is_compiling
    return dynamo_is_compiling()


def is_capturing() -> bool:
    """True while the calling code is being recorded as a graph rather than just run: torch.jit tracing or
    scripting, ONNX export, torch.fx symbolic tracing, or dynamo / torch.export tracing."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or _is_fx_symbolic_tracing() or is_compiling())


def safe_globals() -> list:
    """``torch.serialization.get_safe_globals()`` (torch >= 2.5), else ``[]`` (nothing could be added)."""
    getter = getattr(torch.serialization, 'get_safe_globals', None)
    return list(getter()) if getter is not None else []


def global_name(entry: Any) -> tuple[Any, str]:
    """An allow-list entry, an object or an ``(object, 'module.name')`` pair, as ``(object, name)``."""
    if isinstance(entry, tuple):
        return entry
    return entry, f'{entry.__module__}.{entry.__qualname__}'


def load_weights_only(path: str, map_location: Any = None, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allowed`` added to torch's allow-list, on every torch.

    torch >= 2.6 takes the entries through ``torch.serialization.safe_globals``. Before, a restricted
    unpickler applies the same rules: globals come from torch's allow-list and ``allowed`` only (anything
    else is refused with an ``UnpicklingError`` naming the ``GLOBAL``), and state is set only on tensors,
    parameters, ordered dicts and instances of the allowed classes.

    Args:
        path (str): A file written by ``torch.save``.
        map_location (Any): As for ``torch.load``. Defaults to None.
        allowed (Sequence): Objects, or ``(object, 'module.name')`` pairs for an object stored under
            another name. Defaults to ().

    Returns:
        Any: What the file holds.
    """
    if TORCH >= (2, 6):
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    return _restricted_load(path, map_location, allowed)


def load_replacing_objects(path: str, placeholder: type) -> Any:
    """``torch.load(path, weights_only=True)``, with every global outside torch's weights-only allow-list
    replaced by ``placeholder`` (called with the pickled arguments, given the pickled state), so a training
    checkpoint's extra objects (argparse namespaces, numpy scalars, history buffers) never import or run code.

    torch >= 2.6 does this itself (``get_unsafe_globals_in_checkpoint`` and ``safe_globals`` with names).
    Before, the restricted unpickler of :func:`load_weights_only` does it, with the placeholder standing
    for what it would refuse; globals of :data:`BLOCKED_MODULES` are refused all the same.

    Args:
        path (str): A file written by ``torch.save``.
        placeholder (type): Stands for every global that is not allowed.

    Returns:
        Any: What the file holds, with placeholders for what was not allowed.
    """
    if TORCH >= (2, 6):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - legacy (non-zip) files; torch.load below reports the real error
            unsafe = []
        return load_weights_only(path, 'cpu', [(placeholder, name) for name in unsafe])
    return _restricted_load(path, 'cpu', placeholder=placeholder)


def _restricted_load(path: str, map_location: Any, allowed: Sequence[Any] = (),
                     placeholder: type | None = None) -> Any:
    """``torch.load`` through :class:`_RestrictedPickle` (torch < 2.6)."""
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_RestrictedPickle(allowed, placeholder))


class _RestrictedPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler builds only allowed globals (torch < 2.6).

    A global outside torch's allow-list and ``allowed`` becomes ``placeholder`` where one is given, and is
    refused otherwise; those of :data:`BLOCKED_MODULES` are always refused.
    """

    __name__ = 'restricted_pickle'

    def __init__(self, allowed: Sequence[Any] = (), placeholder: type | None = None) -> None:
        from torch._weights_only_unpickler import _get_allowed_globals
        globals_ = dict(_get_allowed_globals())
        extra = dict(reversed(global_name(entry)) for entry in allowed)
        globals_.update(extra)
        settable = tuple(obj for obj in extra.values() if isinstance(obj, type))

        class Unpickler(pickle._Unpickler):  # the Python implementation: its BUILD can be restricted
            dispatch = dict(pickle._Unpickler.dispatch)

            def find_class(self, module: str, name: str) -> Any:
                if self.proto < 3 and self.fix_imports:  # protocol 2 names Python 2's modules, as pickle maps
                    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
                    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
                qualified = f'{module}.{name}'
                if module.split('.')[0] in BLOCKED_MODULES:
                    raise pickle.UnpicklingError(f'checkpoint asks for GLOBAL {qualified}, from a module that '
                                                 'is never loaded from a checkpoint')
                if qualified in globals_:
                    return globals_[qualified]
                if placeholder is None:
                    raise pickle.UnpicklingError(f'Unsupported global: GLOBAL {qualified} is not an allowed '
                                                 'global')
                return placeholder

            def load_build(self) -> None:
                state = self.stack.pop()
                target = self.stack[-1]
                if placeholder is not None and isinstance(target, placeholder):
                    return
                if type(target) is torch.Tensor:  # legacy files
                    target.set_(*state)
                elif type(target) is torch.nn.Parameter:
                    target.__setstate__(state)
                elif type(target) is collections.OrderedDict:
                    target.__dict__.update(state)
                elif settable and isinstance(target, settable) and not isinstance(target, type):
                    if hasattr(target, '__setstate__'):
                        target.__setstate__(state)
                    else:
                        target.__dict__.update(state)
                else:
                    raise pickle.UnpicklingError(f'checkpoint sets the state of a {type(target).__name__}, '
                                                 'which only tensors, ordered dicts and allowed classes may '
                                                 'have set')

            dispatch[pickle.BUILD[0]] = load_build

        self.Unpickler = Unpickler
        self.UnpicklingError = pickle.UnpicklingError

    def load(self, file: Any, **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()
