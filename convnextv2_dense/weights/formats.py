"""Checkpoint key layouts: how to recognise each one and the table that maps it to our keys.

Our ("canonical") keys are the official release's names with 1-D GRN parameters, which are exactly the
``state_dict()`` keys of :class:`~convnextv2_dense.models.ConvNeXtV2` and
:class:`~convnextv2_dense.models.ConvNeXtV2Classifier`::

    downsample_layers.{i}.{0,1}.{weight,bias}                       stem (i = 0) and downsamplers
    stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2}.{weight,bias}      blocks
    stages.{i}.{j}.grn.{gamma,beta}                                 GRN, shape (4C,)
    out_norms.{stem,stage1..stage4}.{weight,bias}                   backbone output norms
    norm.{weight,bias}, head.{weight,bias}                          classifier's pooled norm and head

Every format is a :class:`KeyFormat`: a detector and a table of ``(regex, replacement, transform)``
rules; the key crosswalk is in ``REFERENCE.md``. Shape transforms are named functions below.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .io import CheckpointError, abbreviate

Transform = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- transforms
def flatten_affine(t: torch.Tensor) -> torch.Tensor:
    """(1, 1, 1, C), (1, C) or (C,) -> (C,): GRN parameters and sparse-conv biases."""
    if any(size != 1 for size in t.shape[:-1]):
        raise ValueError(f'expected a tensor of shape (..., 1, C), got {tuple(t.shape)}')
    return t.reshape(-1)


def squeeze_1x1(t: torch.Tensor) -> torch.Tensor:
    """(out, in, 1, 1) -> (out, in): a 1x1-conv MLP weight as a Linear weight; 2-D passes through."""
    if t.ndim == 4 and t.shape[2:] == (1, 1):
        return t.reshape(t.shape[0], t.shape[1])
    if t.ndim == 2:
        return t
    raise ValueError(f'expected a Linear weight (out, in) or a 1x1 conv weight (out, in, 1, 1), got {tuple(t.shape)}')


def _kernel_side(volume: int) -> int:
    side = math.isqrt(volume)
    if side * side != volume:
        raise ValueError(f'a sparse kernel volume of {volume} is not a square kernel')
    return side


def sparse_dense_kernel(t: torch.Tensor) -> torch.Tensor:
    """MinkowskiEngine conv kernel (k*k, in, out) -> conv weight (out, in, k, k).

    MinkowskiEngine enumerates kernel offsets with the first spatial axis fastest, hence the final
    transpose of the two spatial axes (as the official fine-tuning code does).
    """
    if t.ndim != 3:
        raise ValueError(f'expected a sparse conv kernel (k*k, in, out), got {tuple(t.shape)}')
    volume, c_in, c_out = t.shape
    k = _kernel_side(volume)
    return t.permute(2, 1, 0).reshape(c_out, c_in, k, k).transpose(2, 3).contiguous()


def sparse_depthwise_kernel(t: torch.Tensor) -> torch.Tensor:
    """MinkowskiEngine depthwise kernel (k*k, C) -> depthwise conv weight (C, 1, k, k)."""
    if t.ndim != 2:
        raise ValueError(f'expected a sparse depthwise kernel (k*k, C), got {tuple(t.shape)}')
    volume, channels = t.shape
    k = _kernel_side(volume)
    return t.permute(1, 0).reshape(channels, 1, k, k).transpose(2, 3).contiguous()


def hwio_to_oihw(t: torch.Tensor) -> torch.Tensor:
    """TF Conv2D kernel (kh, kw, in / groups, out) -> conv weight (out, in / groups, kh, kw).

    The depthwise convs of HF's TF model are ``Conv2D(groups=C)``, whose kernel is (7, 7, 1, C); the same
    permutation gives the depthwise weight (C, 1, 7, 7).
    """
    if t.ndim != 4:
        raise ValueError(f'expected a TF conv kernel (kh, kw, in, out), got {tuple(t.shape)}')
    return t.permute(3, 2, 0, 1).contiguous()


def dense_to_linear(t: torch.Tensor) -> torch.Tensor:
    """TF Dense kernel (in, out) -> Linear weight (out, in)."""
    if t.ndim != 2:
        raise ValueError(f'expected a TF Dense kernel (in, out), got {tuple(t.shape)}')
    return t.t().contiguous()


# -------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Rule:
    """One row of a key table: keys matching ``pattern`` (whole key) become ``replacement``.

    Args:
        pattern (str): A regular expression matched against the whole key.
        replacement (str): The canonical key, with ``\\1``-style group references.
        transform (Callable, optional): A shape transform applied to the tensor. Defaults to None.
    """

    pattern: str
    replacement: str
    transform: Transform | None = None


@dataclass(frozen=True)
class KeyFormat:
    """A checkpoint key layout.

    Args:
        name (str): Short name, shown in load reports.
        title (str): What produces such files.
        markers (tuple[str, ...]): Regexes; a checkpoint is in this format when each matches some key.
        rules (tuple[Rule, ...]): The key table; the first matching rule wins.
        drop (tuple[str, ...]): Regexes of keys that are not part of the network (decoder, detector
            heads...); they are reported as ignored. Defaults to ().
        grn_ndim (int, optional): Required ndim of the GRN tensors that matched ``grn_marker``, to
            tell apart layouts that differ only there. Defaults to None.
        grn_marker (str, optional): Regex of GRN keys checked against ``grn_ndim``. Defaults to None.
    """

    name: str
    title: str
    markers: tuple[str, ...]
    rules: tuple[Rule, ...]
    drop: tuple[str, ...] = ()
    grn_ndim: int | None = None
    grn_marker: str | None = None

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``state_dict``'s keys (and GRN shapes) look like this format."""
        keys = list(state_dict)
        if not all(any(re.fullmatch(m, k) for k in keys) for m in self.markers):
            return False
        if self.grn_ndim is not None:
            grn = [v for k, v in state_dict.items() if re.fullmatch(self.grn_marker, k)]
            return bool(grn) and all(v.ndim == self.grn_ndim for v in grn)
        return True


WB = r'(weight|bias)'
BLOCK_PARTS = r'(dwconv|norm|pwconv1|pwconv2)'


def _canonical_rules(prefix: str = '', *, backbone_only: bool = False) -> tuple[Rule, ...]:
    """Identity rules for our own keys under ``prefix`` (GRN flattened, so 4-D official GRN fits)."""
    rules = [
        Rule(rf'{prefix}downsample_layers\.(\d+)\.([01])\.{WB}', r'downsample_layers.\1.\2.\3'),
        Rule(rf'{prefix}stages\.(\d+)\.(\d+)\.{BLOCK_PARTS}\.{WB}', r'stages.\1.\2.\3.\4'),
        Rule(rf'{prefix}stages\.(\d+)\.(\d+)\.grn\.(gamma|beta)', r'stages.\1.\2.grn.\3', flatten_affine),
        Rule(rf'{prefix}out_norms\.(stem|stage[1-9]\d*)\.{WB}', r'out_norms.\1.\2'),
    ]
    if not backbone_only:
        rules.append(Rule(rf'{prefix}(norm|head)\.{WB}', r'\1.\2'))
    return tuple(rules)


HF = r'(?:convnextv2\.)?'  # the base-model prefix of ConvNextV2ForImageClassification
HF_LAYER = rf'{HF}encoder\.stages\.(\d+)\.layers\.(\d+)'
HF_RULES = (
    Rule(rf'{HF}embeddings\.patch_embeddings\.{WB}', r'downsample_layers.0.0.\1'),
    Rule(rf'{HF}embeddings\.layernorm\.{WB}', r'downsample_layers.0.1.\1'),
    Rule(rf'{HF}encoder\.stages\.([1-9]\d*)\.downsampling_layer\.([01])\.{WB}', r'downsample_layers.\1.\2.\3'),
    Rule(rf'{HF_LAYER}\.(dwconv|pwconv1|pwconv2)\.{WB}', r'stages.\1.\2.\3.\4'),
    Rule(rf'{HF_LAYER}\.layernorm\.{WB}', r'stages.\1.\2.norm.\3'),
    Rule(rf'{HF_LAYER}\.grn\.weight', r'stages.\1.\2.grn.gamma', flatten_affine),
    Rule(rf'{HF_LAYER}\.grn\.bias', r'stages.\1.\2.grn.beta', flatten_affine),
    Rule(rf'{HF}layernorm\.{WB}', r'norm.\1'),
    Rule(rf'classifier\.{WB}', r'head.\1'),
    Rule(rf'hidden_states_norms\.(stem|stage[1-9]\d*)\.{WB}', r'out_norms.\1.\2'),
)

# HF's TensorFlow models (TFConvNextV2Model / TFConvNextV2ForImageClassification): TF variable names
# without the model's name, as in ``tf_model.h5`` (read by :mod:`.keras_h5`) and HF's TF safetensors.
# Keras names LayerNorm parameters gamma/beta and conv/Dense weights ``kernel``; ``:0`` is optional here.
TF_END = r'(?::0)?'
TF_LAYER = r'convnextv2/encoder/stages\.(\d+)/layers\.(\d+)'
TF_DOWN = r'convnextv2/encoder/stages\.([1-9]\d*)/downsampling_layer'


def _tf_norm(pattern: str, target: str) -> tuple[Rule, Rule]:
    """A Keras LayerNormalization at ``pattern``: gamma -> ``target.weight``, beta -> ``target.bias``."""
    return (Rule(rf'{pattern}/gamma{TF_END}', rf'{target}.weight'),
            Rule(rf'{pattern}/beta{TF_END}', rf'{target}.bias'))


def _tf_layer(pattern: str, target: str, kernel: Transform) -> tuple[Rule, Rule]:
    """A Keras Conv2D or Dense at ``pattern``: kernel -> ``target.weight`` (by ``kernel``), bias."""
    return (Rule(rf'{pattern}/kernel{TF_END}', rf'{target}.weight', kernel),
            Rule(rf'{pattern}/bias{TF_END}', rf'{target}.bias'))


HF_TF_RULES = (
    *_tf_layer(r'convnextv2/embeddings/patch_embeddings', 'downsample_layers.0.0', hwio_to_oihw),
    *_tf_norm(r'convnextv2/embeddings/layernorm', 'downsample_layers.0.1'),
    *_tf_norm(rf'{TF_DOWN}\.0', r'downsample_layers.\1.0'),
    *_tf_layer(rf'{TF_DOWN}\.1', r'downsample_layers.\1.1', hwio_to_oihw),
    *_tf_layer(rf'{TF_LAYER}/dwconv', r'stages.\1.\2.dwconv', hwio_to_oihw),
    *_tf_norm(rf'{TF_LAYER}/layernorm', r'stages.\1.\2.norm'),
    *_tf_layer(rf'{TF_LAYER}/pwconv1', r'stages.\1.\2.pwconv1', dense_to_linear),
    *_tf_layer(rf'{TF_LAYER}/pwconv2', r'stages.\1.\2.pwconv2', dense_to_linear),
    Rule(rf'{TF_LAYER}/grn/weight{TF_END}', r'stages.\1.\2.grn.gamma', flatten_affine),
    Rule(rf'{TF_LAYER}/grn/bias{TF_END}', r'stages.\1.\2.grn.beta', flatten_affine),
    *_tf_norm(r'convnextv2/layernorm', 'norm'),
    *_tf_layer(r'classifier', 'head', dense_to_linear),
)

TIMM_BLOCK = r'stages\.(\d+)\.blocks\.(\d+)'
TIMM_RULES = (
    Rule(rf'stem\.([01])\.{WB}', r'downsample_layers.0.\1.\2'),
    Rule(rf'stages\.([1-9]\d*)\.downsample\.([01])\.{WB}', r'downsample_layers.\1.\2.\3'),
    Rule(rf'{TIMM_BLOCK}\.conv_dw\.{WB}', r'stages.\1.\2.dwconv.\3'),
    Rule(rf'{TIMM_BLOCK}\.norm\.{WB}', r'stages.\1.\2.norm.\3'),
    Rule(rf'{TIMM_BLOCK}\.mlp\.fc1\.weight', r'stages.\1.\2.pwconv1.weight', squeeze_1x1),
    Rule(rf'{TIMM_BLOCK}\.mlp\.fc1\.bias', r'stages.\1.\2.pwconv1.bias'),
    Rule(rf'{TIMM_BLOCK}\.mlp\.fc2\.weight', r'stages.\1.\2.pwconv2.weight', squeeze_1x1),
    Rule(rf'{TIMM_BLOCK}\.mlp\.fc2\.bias', r'stages.\1.\2.pwconv2.bias'),
    Rule(rf'{TIMM_BLOCK}\.mlp\.grn\.weight', r'stages.\1.\2.grn.gamma', flatten_affine),
    Rule(rf'{TIMM_BLOCK}\.mlp\.grn\.bias', r'stages.\1.\2.grn.beta', flatten_affine),
    Rule(rf'head\.norm\.{WB}', r'norm.\1'),
    Rule(rf'head\.fc\.{WB}', r'head.\1'),
)

MMPRE_BLOCK = r'backbone\.stages\.([0-3])\.(\d+)'
MMPRE_RULES = (
    Rule(rf'backbone\.downsample_layers\.([0-3])\.([01])\.{WB}', r'downsample_layers.\1.\2.\3'),
    Rule(rf'{MMPRE_BLOCK}\.depthwise_conv\.{WB}', r'stages.\1.\2.dwconv.\3'),
    Rule(rf'{MMPRE_BLOCK}\.norm\.{WB}', r'stages.\1.\2.norm.\3'),
    Rule(rf'{MMPRE_BLOCK}\.pointwise_conv([12])\.weight', r'stages.\1.\2.pwconv\3.weight', squeeze_1x1),
    Rule(rf'{MMPRE_BLOCK}\.pointwise_conv([12])\.bias', r'stages.\1.\2.pwconv\3.bias'),
    Rule(rf'{MMPRE_BLOCK}\.grn\.(gamma|beta)', r'stages.\1.\2.grn.\3', flatten_affine),
    Rule(rf'head\.fc\.{WB}', r'head.\1'),
)
# mmpretrain's ``norm{i}`` follows stage i+1. In a classifier (only norm3) it is the pooled norm; in a
# dense model (mmdet/mmseg with out_indices 0..3) each is an output norm.
MMPRE_POOLED_NORM = (Rule(rf'backbone\.norm3\.{WB}', r'norm.\1'),)
MMPRE_OUT_NORMS = tuple(Rule(rf'backbone\.norm{i}\.{WB}', rf'out_norms.stage{i + 1}.\1') for i in range(4))
NOT_MMPRE = r'(?!backbone\.|head\.fc\.).*'  # necks, detector / segmentor heads, data preprocessor

FCMAE_BLOCK = r'encoder\.stages\.([0-3])\.(\d+)'
FCMAE_RULES = (
    Rule(rf'encoder\.downsample_layers\.0\.([01])\.{WB}', r'downsample_layers.0.\1.\2'),
    Rule(r'encoder\.downsample_layers\.([1-3])\.0\.ln\.' + WB, r'downsample_layers.\1.0.\2'),
    Rule(r'encoder\.downsample_layers\.([1-3])\.1\.kernel', r'downsample_layers.\1.1.weight', sparse_dense_kernel),
    Rule(r'encoder\.downsample_layers\.([1-3])\.1\.bias', r'downsample_layers.\1.1.bias', flatten_affine),
    Rule(rf'{FCMAE_BLOCK}\.dwconv\.kernel', r'stages.\1.\2.dwconv.weight', sparse_depthwise_kernel),
    Rule(rf'{FCMAE_BLOCK}\.dwconv\.bias', r'stages.\1.\2.dwconv.bias', flatten_affine),
    Rule(rf'{FCMAE_BLOCK}\.norm\.ln\.{WB}', r'stages.\1.\2.norm.\3'),
    Rule(rf'{FCMAE_BLOCK}\.(pwconv1|pwconv2)\.linear\.{WB}', r'stages.\1.\2.\3.\4'),
    Rule(rf'{FCMAE_BLOCK}\.grn\.(gamma|beta)', r'stages.\1.\2.grn.\3', flatten_affine),
)

GRN_KEY = r'stages\.\d+\.\d+\.grn\.(?:gamma|beta)'
FORMATS: tuple[KeyFormat, ...] = (
    KeyFormat('fcmae', 'official FCMAE pre-training (sparse encoder, decoder dropped)',
              markers=(r'encoder\.stages\.\d+\.\d+\.dwconv\.kernel',), rules=FCMAE_RULES,
              drop=(r'decoder\..*', r'mask_token', r'proj\..*', r'pred\..*')),
    KeyFormat('hf', 'HF transformers (ConvNextV2Model, ConvNextV2Backbone or ConvNextV2ForImageClassification)',
              markers=(rf'{HF}embeddings\.patch_embeddings\.weight', rf'{HF_LAYER}\.grn\.weight'), rules=HF_RULES),
    KeyFormat('hf-tf', 'HF transformers TensorFlow (TFConvNextV2Model or TFConvNextV2ForImageClassification, '
              'tf_model.h5)', markers=(rf'convnextv2/embeddings/patch_embeddings/kernel{TF_END}',
                                       rf'{TF_LAYER}/grn/weight{TF_END}'), rules=HF_TF_RULES),
    KeyFormat('timm', 'timm convnextv2_*', markers=(r'stem\.0\.weight', rf'{TIMM_BLOCK}\.conv_dw\.weight'),
              rules=TIMM_RULES),
    KeyFormat('mmpretrain-dense', 'mmpretrain ConvNeXt with per-stage output norms (inside mmdet / mmseg)',
              markers=(rf'{MMPRE_BLOCK}\.depthwise_conv\.weight', r'backbone\.norm[0-2]\.weight'),
              rules=MMPRE_RULES + MMPRE_OUT_NORMS, drop=(NOT_MMPRE,)),
    KeyFormat('mmpretrain', 'mmpretrain ConvNeXt classifier (use_grn=True)',
              markers=(rf'{MMPRE_BLOCK}\.depthwise_conv\.weight',), rules=MMPRE_RULES + MMPRE_POOLED_NORM,
              drop=(NOT_MMPRE,)),
    KeyFormat('openmmlab', 'OpenMMLab detector / segmentor with a convnextv2_dense backbone',
              markers=(r'backbone\.stages\.\d+\.\d+\.dwconv\.weight',),
              rules=_canonical_rules('backbone\\.', backbone_only=True), drop=(r'(?!backbone\.).*',)),
    KeyFormat('official', 'official ConvNeXt V2 release (4-D GRN)', markers=(r'stages\.\d+\.\d+\.dwconv\.weight',),
              rules=_canonical_rules(), grn_ndim=4, grn_marker=GRN_KEY),
    KeyFormat('convnextv2_dense', 'convnextv2_dense (ours)', markers=(r'stages\.\d+\.\d+\.dwconv\.weight',),
              rules=_canonical_rules()),
)
FORMAT_NAMES: tuple[str, ...] = tuple(f.name for f in FORMATS)


@dataclass
class Converted:
    """A state dict in our key space.

    Args:
        format (KeyFormat): The detected source format.
        state_dict (dict[str, torch.Tensor]): Tensors under canonical keys.
        dropped (tuple[str, ...]): Source keys that are not part of the network (decoder, necks...).
    """

    format: KeyFormat
    state_dict: dict[str, torch.Tensor]
    dropped: tuple[str, ...]


def detect_format(state_dict: Mapping[str, torch.Tensor], where: str = 'checkpoint') -> KeyFormat:
    """The first format of :data:`FORMATS` whose markers all match.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors by key, wrappers already removed.
        where (str): Names the file in messages. Defaults to ``'checkpoint'``.

    Raises:
        CheckpointError: No format matches; the message names the formats tried and some keys.
    """
    for fmt in FORMATS:
        if fmt.matches(state_dict):
            return fmt
    raise CheckpointError(f'{where}: the keys match none of the known ConvNeXt V2 checkpoint formats '
                          f'({", ".join(FORMAT_NAMES)}); its first keys are {abbreviate(list(state_dict), 6)}')


def to_canonical(state_dict: Mapping[str, torch.Tensor], fmt: KeyFormat | str | None = None,
                 where: str = 'checkpoint') -> Converted:
    """Rename and reshape a state dict of format ``fmt`` into our key space, by its table.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors by key in the file.
        fmt (KeyFormat | str, optional): The format, or None to detect it. Defaults to None.
        where (str): Names the file in messages. Defaults to ``'checkpoint'``.

    Returns:
        Converted: Canonical tensors and the keys dropped as not part of the network.

    Raises:
        CheckpointError: A key no rule maps, two keys mapping to one, or a tensor a transform rejects.
    """
    if fmt is None:
        fmt = detect_format(state_dict, where)
    elif isinstance(fmt, str):
        if fmt not in FORMAT_NAMES:
            raise ValueError(f'unknown checkpoint format {fmt!r}; known formats: {", ".join(FORMAT_NAMES)}')
        fmt = FORMATS[FORMAT_NAMES.index(fmt)]
    rules = [(re.compile(r.pattern), r) for r in fmt.rules]
    drop = [re.compile(p) for p in fmt.drop]
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped, unmapped = [], []
    for key, tensor in state_dict.items():
        if any(p.fullmatch(key) for p in drop):
            dropped.append(key)
            continue
        hit = next(((m, r) for p, r in rules if (m := p.fullmatch(key))), None)
        if hit is None:
            unmapped.append(key)
            continue
        match, rule = hit
        new_key = match.expand(rule.replacement)
        if new_key in out:
            raise CheckpointError(f'{where}: {origin[new_key]!r} and {key!r} both map to {new_key!r}')
        if rule.transform is not None:
            try:
                tensor = rule.transform(tensor)
            except ValueError as err:
                raise CheckpointError(f'{where}: {key!r} ({fmt.name} format): {err}') from err
        out[new_key], origin[new_key] = tensor, key
    if unmapped:
        raise CheckpointError(f'{where}: unexpected keys for the {fmt.name} format ({fmt.title}): '
                              f'{abbreviate(unmapped)}')
    return Converted(fmt, out, tuple(dropped))


def canonical_key(key: str, fmt: KeyFormat | str) -> str | None:
    """The canonical name of one key of format ``fmt`` (no tensor needed), or None if no rule maps it.

    With :func:`~convnextv2_dense.models.naming.parse_param_name` this tells where a parameter of another
    implementation sits, e.g. ``canonical_key('encoder.stages.2.layers.4.pwconv1.weight', 'hf')``.
    """
    if isinstance(fmt, str):
        if fmt not in FORMAT_NAMES:
            raise ValueError(f'unknown checkpoint format {fmt!r}; known formats: {", ".join(FORMAT_NAMES)}')
        fmt = FORMATS[FORMAT_NAMES.index(fmt)]
    for rule in fmt.rules:
        if match := re.fullmatch(rule.pattern, key):
            return match.expand(rule.replacement)
    return None
