"""The activations a ConvNeXt V2 block can use, by HF transformers' ``hidden_act`` names.

The released models all use exact GELU. The other names are those of HF's ``ACT2FN`` that have no
parameters (so the parameter names stay the same); each matches HF's function (see the tests). ``selu``
is in HF's ``ConvNextV2Config`` documentation but not in its ``ACT2FN`` (HF's own model cannot be built
with it); here it is ``torch.nn.SELU``.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, HF's ``quick_gelu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_TANH_GELU = partial(nn.GELU, approximate='tanh')
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    'gelu': nn.GELU,
    'gelu_python': nn.GELU,
    'gelu_new': _TANH_GELU,             # HF's NewGELUActivation: the tanh approximation
    'gelu_fast': _TANH_GELU,            # the same approximation, written differently
    'gelu_accurate': _TANH_GELU,
    'gelu_pytorch_tanh': _TANH_GELU,
    'gelu_python_tanh': _TANH_GELU,
    'quick_gelu': QuickGELU,
    'hardswish': nn.Hardswish,
    'linear': nn.Identity,
    'relu': nn.ReLU,
    'relu6': nn.ReLU6,
    'leaky_relu': nn.LeakyReLU,
    'selu': nn.SELU,
    'silu': nn.SiLU,
    'swish': nn.SiLU,
    'mish': nn.Mish,
    'tanh': nn.Tanh,
    'sigmoid': nn.Sigmoid,
}


def check_activation(name: object) -> str:
    """Return ``name`` if it is a supported activation, else raise a ValueError listing the supported ones."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f'unsupported activation (hidden_act) {name!r}; supported: {", ".join(ACTIVATIONS)}')
    return name


def build_activation(name: str) -> nn.Module:
    """A fresh activation module for the HF ``hidden_act`` name ``name``."""
    return ACTIVATIONS[check_activation(name)]()
