"""Module-level names of mm code replaced for the length of one call: how the fast variants
(:mod:`.fast_heads`, :mod:`.fast_det`) run the stock code with one helper swapped."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def swapped_globals(module_name: str, **replacements: Any) -> Iterator[None]:
    """Replace module-level names of an imported module for the duration of the ``with`` block (one thread)."""
    module = sys.modules[module_name]
    saved = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
