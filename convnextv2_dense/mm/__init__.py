"""OpenMMLab adapters. :func:`register_all` registers with each mm package when it is imported.

The submodules other than ``registration`` import mmengine; they are loaded only by that hook.
"""
from .registration import register_all

__all__ = ['register_all']
