"""convnextv2_dense: ConvNeXt V2 for detection and segmentation with OpenMMLab.

``from convnextv2_dense import ConvNeXtV2`` needs only torch, and torch is imported only when a model
is asked for, so the data and evaluation tools start fast. Importing the package also arranges for the
OpenMMLab adapters (backbone, layer-decay optimizer constructor, checkpoint and guard hooks) to be
registered in each mm package as soon as that package is imported; without mm the import still works.
It changes no loader and no allow-list: see :mod:`convnextv2_dense.mm.checkpoint_safety`.
"""
from typing import Any

from .mm.registration import register_all as _register_all

__version__ = '0.1.0'
__all__ = ['ARCHS', 'ConvNeXtV2', 'ConvNeXtV2Classifier', '__version__']

_register_all()


def __getattr__(name: str) -> Any:
    if name in ('ARCHS', 'ConvNeXtV2', 'ConvNeXtV2Classifier'):
        from . import models
        return getattr(models, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
