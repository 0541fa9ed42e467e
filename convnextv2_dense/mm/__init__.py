"""OpenMMLab adapters; :func:`register_all` is a no-op for mm packages that are not installed."""
from .registration import register_all

__all__ = ['register_all']
