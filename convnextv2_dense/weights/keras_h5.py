"""Reading Keras 2 HDF5 weight files, such as HF transformers' ``tf_model.h5``, without TensorFlow.

HF's ``TFConvNextV2Model`` / ``TFConvNextV2ForImageClassification`` ``save_pretrained`` writes its
weights with Keras 2's ``save_weights`` (h5 layout), or in shards of its own:

- Keras 2: the root attribute ``layer_names`` lists the model's top-level layers (``convnextv2``, and
  ``classifier`` for the classifier). Each is a group whose ``weight_names`` attribute lists the TF
  variable names it holds, such as
  ``tf_conv_next_v2_model/convnextv2/encoder/stages.0/layers.0/dwconv/kernel:0``; the first component
  is the model's own name, and the dataset sits at that name inside the group.
- HF shards (``tf_model-0000k-of-0000n.h5`` beside ``tf_model.h5.index.json``): ``layer_names`` lists
  datasets at the root, already named without the model's name.
- An attribute over 64 KB is split into ``name0``, ``name1``, ... .

:func:`read_keras_h5` returns the tensors as stored (TF layout: HWIO conv kernels, ``(in, out)`` Dense
kernels), keyed by the variable name without the model's name (``convnextv2/embeddings/...:0``); the
key table in :mod:`.formats` maps them to ours. ``h5py`` is imported only when such a file is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .io import CheckpointError, abbreviate

HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def _text_list(node: Any, name: str) -> list[str] | None:
    """A Keras list-of-strings attribute, joined over its ``name0``, ``name1``... chunks; None if absent."""
    attrs = node.attrs
    if name in attrs:
        chunks = [attrs[name]]
    elif f'{name}0' in attrs:
        chunks, k = [], 0
        while f'{name}{k}' in attrs:
            chunks.append(attrs[f'{name}{k}'])
            k += 1
    else:
        return None
    return [v.decode('utf8') if isinstance(v, bytes) else str(v) for chunk in chunks for v in chunk]


def _tensor(dataset: Any, where: str) -> torch.Tensor:
    if dataset.dtype.kind not in 'fiub':
        raise CheckpointError(f'{where} holds {dataset.dtype} data, not numbers')
    return torch.as_tensor(dataset[()])


def _read_layers(f: Any, path: Path, dataset_type: type) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The top-level layers named in ``layer_names`` and the tensors they hold."""
    layers = _text_list(f, 'layer_names')
    if layers is None:
        raise CheckpointError(f'{path} is an HDF5 file without a "layer_names" attribute: not weights '
                              'written by Keras 2 save_weights or HF save_pretrained (Keras 3 '
                              '.weights.h5 files are not supported)')
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        if layer not in f:
            raise CheckpointError(f'{path}: layer {layer!r} is listed in "layer_names" but absent')
        node = f[layer]
        if isinstance(node, dataset_type):  # an HF shard: datasets named without the model's name
            items = [(layer, node)]
        else:
            names = _text_list(node, 'weight_names') or []
            absent = [n for n in names if n not in node]
            if absent:
                raise CheckpointError(f'{path}: layer {layer!r} lists weights it does not hold: '
                                      f'{abbreviate(absent)}')
            items = [(n.split('/', 1)[1] if '/' in n else n, node[n]) for n in names]
        for key, dataset in items:
            if key in out:
                raise CheckpointError(f'{path}: two weights are named {key!r}')
            out[key] = _tensor(dataset, f'{path}: {key!r}')
    return layers, out


def read_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a Keras 2 / HF transformers TF ``.h5`` file.

    Args:
        path (str | Path): The ``.h5`` file (whole, or one HF shard).

    Returns:
        dict[str, torch.Tensor]: Tensors in TF layout, keyed by the TF variable name without the
        model's name (``convnextv2/embeddings/patch_embeddings/kernel:0``).

    Raises:
        CheckpointError: h5py missing, a file that is not HDF5 or not laid out by Keras 2 / HF (no
            ``layer_names``), a listed weight that is absent, or two weights with one name.
    """
    path = Path(path)
    try:
        import h5py
    except ImportError as err:
        raise CheckpointError(f'{path} is an HDF5 file (Keras / HF TensorFlow weights); reading it needs '
                              'h5py: pip install h5py') from err
    try:
        with h5py.File(path, 'r') as f:
            layers, out = _read_layers(f, path, h5py.Dataset)
    except OSError as err:  # h5py's error for a truncated or corrupt file, at open or at a read
        raise CheckpointError(f'{path} is not a readable HDF5 file (truncated or corrupt?): {err}') from err
    if not out:
        raise CheckpointError(f'{path} holds no weights (its "layer_names" is {layers})')
    return out
