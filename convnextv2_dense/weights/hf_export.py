"""Writing a checkpoint back in HF transformers' PyTorch folder layout (``config.json`` + ``model.safetensors``).

The class written is the one whose keys the checkpoint fills: ``ConvNextV2ForImageClassification`` for a
classifier (pooled norm and head), ``ConvNextV2Model`` for a trunk with the pooled norm,
``ConvNextV2Backbone`` for a dense backbone with output norms (``out_features`` = the stages that have
one). The key crosswalk is the one in ``REFERENCE.md``, read from our side.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.archs import ArchSpec
from .formats import Rule

HF_CLASSES = ('ConvNextV2ForImageClassification', 'ConvNextV2Model', 'ConvNextV2Backbone')
HF_STAGE_NAMES = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
BASE_PREFIX = 'convnextv2.'  # ConvNextV2ForImageClassification's base_model_prefix


def _grn_4d(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, 1, 1, C): HF keeps the GRN parameters 4-D."""
    return t.reshape(1, 1, 1, -1)


WB = r'(weight|bias)'
TRUNK_TO_HF = (  # our key -> HF key without the base-model prefix
    Rule(rf'downsample_layers\.0\.0\.{WB}', r'embeddings.patch_embeddings.\1'),
    Rule(rf'downsample_layers\.0\.1\.{WB}', r'embeddings.layernorm.\1'),
    Rule(rf'downsample_layers\.([1-3])\.([01])\.{WB}', r'encoder.stages.\1.downsampling_layer.\2.\3'),
    Rule(rf'stages\.(\d+)\.(\d+)\.(dwconv|pwconv1|pwconv2)\.{WB}', r'encoder.stages.\1.layers.\2.\3.\4'),
    Rule(rf'stages\.(\d+)\.(\d+)\.norm\.{WB}', r'encoder.stages.\1.layers.\2.layernorm.\3'),
    Rule(r'stages\.(\d+)\.(\d+)\.grn\.gamma', r'encoder.stages.\1.layers.\2.grn.weight', _grn_4d),
    Rule(r'stages\.(\d+)\.(\d+)\.grn\.beta', r'encoder.stages.\1.layers.\2.grn.bias', _grn_4d),
)
POOLED_NORM_TO_HF = (Rule(rf'norm\.{WB}', r'layernorm.\1'),)
HEAD_TO_HF = (Rule(rf'head\.{WB}', r'classifier.\1'),)
OUT_NORMS_TO_HF = (Rule(rf'out_norms\.(stem|stage[1-4])\.{WB}', r'hidden_states_norms.\1.\2'),)


@dataclass(frozen=True)
class HFExport:
    """What :func:`save_hf_pretrained` wrote.

    Args:
        folder (Path): The folder with ``config.json`` and ``model.safetensors``.
        architecture (str): The HF class the keys are named for.
        tensors (int): Number of tensors written.
        fresh (tuple[str, ...]): HF keys the source has no tensor for, written as an identity
            LayerNorm (the pooled norm of ``ConvNextV2Model`` when the source is a bare trunk).
        left_out (tuple[str, ...]): Our keys that the chosen class has no place for.
    """

    folder: Path
    architecture: str
    tensors: int
    fresh: tuple[str, ...]
    left_out: tuple[str, ...]


def default_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The HF class that holds every tensor of a canonical state dict (see the module docstring)."""
    if 'head.weight' in state_dict:
        return 'ConvNextV2ForImageClassification'
    if 'norm.weight' not in state_dict and any(k.startswith('out_norms.') for k in state_dict):
        return 'ConvNextV2Backbone'
    return 'ConvNextV2Model'


def _rename(state_dict: Mapping[str, torch.Tensor], rules: tuple[Rule, ...],
            prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    compiled = [(re.compile(r.pattern), r) for r in rules]
    out, unmatched = {}, []
    for key, tensor in state_dict.items():
        hit = next(((m, r) for p, r in compiled if (m := p.fullmatch(key))), None)
        if hit is None:
            unmatched.append(key)
            continue
        match, rule = hit
        value = rule.transform(tensor) if rule.transform is not None else tensor
        out[prefix + match.expand(rule.replacement)] = value.detach().to('cpu').contiguous().clone()
    return out, unmatched


def to_hf_state_dict(state_dict: Mapping[str, torch.Tensor], architecture: str,
                     ) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[str, ...]]:
    """Rename and reshape a canonical state dict into ``architecture``'s keys.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors under our keys.
        architecture (str): One of :data:`HF_CLASSES`.

    Returns:
        tuple: The HF tensors, the HF keys written fresh (an identity pooled norm), and our keys left out.
    """
    if architecture not in HF_CLASSES:
        raise ValueError(f'unknown HF class {architecture!r}; known: {", ".join(HF_CLASSES)}')
    rules = TRUNK_TO_HF
    if architecture == 'ConvNextV2ForImageClassification':
        missing = [k for k in ('norm.weight', 'norm.bias', 'head.weight', 'head.bias') if k not in state_dict]
        if missing:
            raise ValueError(f'ConvNextV2ForImageClassification needs the pooled norm and the head; the '
                             f'checkpoint lacks {", ".join(missing)}')
        tensors, left_out = _rename(state_dict, rules + POOLED_NORM_TO_HF, BASE_PREFIX)
        head, left_out = _rename({k: state_dict[k] for k in left_out}, HEAD_TO_HF, '')
        tensors.update(head)
    elif architecture == 'ConvNextV2Model':
        tensors, left_out = _rename(state_dict, rules + POOLED_NORM_TO_HF, '')
    else:
        tensors, left_out = _rename(state_dict, rules + OUT_NORMS_TO_HF, '')
    fresh = []
    if architecture == 'ConvNextV2Model' and 'layernorm.weight' not in tensors:
        width = tensors['encoder.stages.3.layers.0.dwconv.weight'].shape[0]
        tensors['layernorm.weight'], tensors['layernorm.bias'] = torch.ones(width), torch.zeros(width)
        fresh = ['layernorm.weight', 'layernorm.bias']
    return tensors, tuple(fresh), tuple(sorted(left_out))


def hf_config(spec: ArchSpec, architecture: str, *, in_channels: int = 3, layer_norm_eps: float = 1e-6,
              num_labels: int | None = None, id2label: Mapping[int, str] | None = None,
              out_features: tuple[str, ...] = ('stage4',)) -> dict:
    """The ``config.json`` of HF's ``ConvNextV2Config`` for a checkpoint.

    The fields are those of the released models: four stages and a 4x4 patchifying stem (the only
    shapes our canonical keys describe), GELU, drop path 0 (a training setting).

    Args:
        spec (ArchSpec): Depths and widths.
        architecture (str): One of :data:`HF_CLASSES`.
        in_channels (int): Input channels (``num_channels``). Defaults to 3.
        layer_norm_eps (float): Epsilon of the pooled LayerNorm (HF uses it nowhere else). Defaults to 1e-6.
        num_labels (int, optional): Classes of a classifier. Defaults to None.
        id2label (Mapping[int, str], optional): Class names; ``LABEL_i`` when None. Defaults to None.
        out_features (tuple[str, ...]): Stages a ``ConvNextV2Backbone`` returns. Defaults to ``('stage4',)``.
    """
    config = {
        'architectures': [architecture], 'model_type': 'convnextv2',
        'num_channels': in_channels, 'patch_size': 4, 'num_stages': 4,
        'depths': list(spec.depths), 'hidden_sizes': list(spec.dims), 'hidden_act': 'gelu',
        'initializer_range': 0.02, 'layer_norm_eps': layer_norm_eps, 'drop_path_rate': 0.0, 'image_size': 224,
        'stage_names': list(HF_STAGE_NAMES), 'out_features': list(out_features),
        'out_indices': [HF_STAGE_NAMES.index(s) for s in out_features],
    }
    if num_labels is not None:
        labels = dict(id2label) if id2label is not None else {i: f'LABEL_{i}' for i in range(num_labels)}
        if sorted(labels) != list(range(num_labels)):
            raise ValueError(f'id2label must name classes 0..{num_labels - 1}, got ids {sorted(labels)[:8]}...')
        config['id2label'] = {str(i): labels[i] for i in range(num_labels)}
        config['label2id'] = {name: i for i, name in labels.items()}
    return config


def save_hf_pretrained(state_dict: Mapping[str, torch.Tensor], folder: str | os.PathLike, spec: ArchSpec, *,
                       architecture: str | None = None, layer_norm_eps: float | None = None,
                       id2label: Mapping[int, str] | None = None) -> HFExport:
    """Write a canonical state dict as an HF transformers folder that ``from_pretrained`` loads.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors under our keys.
        folder (str | PathLike): The output folder (created; existing files of the same name replaced).
        spec (ArchSpec): The checkpoint's depths and widths.
        architecture (str, optional): One of :data:`HF_CLASSES`; None picks the class that holds every
            tensor (:func:`default_architecture`). Defaults to None.
        layer_norm_eps (float, optional): The pooled norm's epsilon; None means the official 1e-6.
            Defaults to None.
        id2label (Mapping[int, str], optional): A classifier's class names. Defaults to None.

    Returns:
        HFExport: The folder, the class, and any tensors written fresh or left out.

    Raises:
        ValueError: A class that needs tensors the checkpoint lacks, or a stem that is not 4x4.
    """
    architecture = architecture or default_architecture(state_dict)
    stem = state_dict['downsample_layers.0.0.weight']
    if tuple(stem.shape[2:]) != (4, 4):
        raise ValueError(f'HF ConvNextV2Config describes a 4x4 stem here; this one is {tuple(stem.shape[2:])}')
    tensors, fresh, left_out = to_hf_state_dict(state_dict, architecture)
    out_features = ('stage4',)
    if architecture == 'ConvNextV2Backbone':
        out_features = tuple(s for s in HF_STAGE_NAMES if f'hidden_states_norms.{s}.weight' in tensors)
        if not out_features:
            raise ValueError('ConvNextV2Backbone needs output norms; the checkpoint has none '
                             '(write ConvNextV2Model instead)')
    num_labels = int(state_dict['head.weight'].shape[0]) if architecture == HF_CLASSES[0] else None
    config = hf_config(spec, architecture, in_channels=int(stem.shape[1]),
                       layer_norm_eps=1e-6 if layer_norm_eps is None else float(layer_norm_eps),
                       num_labels=num_labels, id2label=id2label if num_labels else None,
                       out_features=out_features)
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, write in (('model.safetensors', lambda p: save_file(tensors, p, metadata={'format': 'pt'})),
                        ('config.json', lambda p: Path(p).write_text(json.dumps(config, indent=2) + '\n'))):
        part = folder / f'.{name}.part'  # complete files only: a crash leaves no half-written checkpoint
        write(str(part))
        os.replace(part, folder / name)
    return HFExport(folder, architecture, len(tensors), fresh, left_out)
