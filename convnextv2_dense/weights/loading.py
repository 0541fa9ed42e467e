"""Strict loading of any supported checkpoint into our models, the load report, and saving ours.

A key that is missing, unexpected or of the wrong shape is an error that names it. What a checkpoint
may lack, and what of it may stay unused, is what the model declares (its ``load_policy()``: a
backbone's fresh output norms; a classifier's head, or the stages a backbone does not build); a missing
GRN tensor would leave a silent identity and is refused like any other key.
"""
from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..models.archs import ArchSpec, arch_name, resolve_arch
from ..models.hf_config import hf_arch_kwargs, hf_head_norm_eps
from ..models.load_policy import LoadPolicy
from .arch import check_declared_arch, covers_built_stages, describe_arch, infer_arch, stage_depths
from .formats import to_canonical
from .io import META_KEY, CheckpointError, RawCheckpoint, abbreviate, read_checkpoint

M = TypeVar('M', bound=nn.Module)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoadReport:
    """What a load did.

    Args:
        format (str): The detected checkpoint format (see :data:`~.formats.FORMAT_NAMES`).
        source (str): The path, URL or repo id that was read.
        arch (str): The checkpoint's arch name, or its depths and dims for a custom arch.
        loaded (tuple[str, ...]): Model keys filled from the checkpoint.
        new (tuple[str, ...]): Model keys the checkpoint lacks that were left freshly initialised
            (a backbone's output norms).
        ignored (tuple[str, ...]): Checkpoint keys not used: parts the model does not have (a
            classifier's head when loading a backbone) or that are not part of the network.
        skipped (tuple[str, ...]): Checkpoint keys of the stages (and their downsamplers) that the
            model does not build, because it returns no later stage.
    """

    format: str
    source: str
    arch: str
    loaded: tuple[str, ...]
    new: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f'Loaded {len(self.loaded)} tensors of a ConvNeXt V2-{self.arch} from {self.source} '
                 f'(format: {self.format}).']
        if self.new:
            lines.append(f'  new (freshly initialised, not in the checkpoint): {abbreviate(self.new)}')
        if self.ignored:
            lines.append(f'  ignored (in the checkpoint, not used by this model): {abbreviate(self.ignored)}')
        if self.skipped:
            lines.append(f'  unused (stages this backbone does not build): {abbreviate(self.skipped)}')
        return '\n'.join(lines)


# ------------------------------------------------------------------------------------------- reading
@dataclass
class CanonicalCheckpoint:
    """A checkpoint converted to our key space, with what is known about it.

    Args:
        state_dict (dict[str, torch.Tensor]): Tensors under canonical keys.
        format (str): The detected format's name.
        source (str): What was read.
        dropped (tuple[str, ...]): Source keys that are not part of the network.
        hints (dict): Constructor arguments the source records (every architecture field of an HF
            ``config.json``; ``act`` and ``head_norm_eps`` from our own meta).
        declared (ArchSpec, optional): The arch the source declares (HF ``config.json``, our meta), which
            may have more stages than the tensors hold. Defaults to None (inferred from the shapes).
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    source: str
    dropped: tuple[str, ...]
    hints: dict
    declared: ArchSpec | None = None

    @property
    def arch(self) -> ArchSpec:
        return infer_arch(self.state_dict, self.source) if self.declared is None else self.declared


def read_canonical(source: str | os.PathLike | RawCheckpoint) -> CanonicalCheckpoint:
    """Read any supported checkpoint and convert it to our key space.

    Args:
        source (str | PathLike | RawCheckpoint): See :func:`~.io.read_checkpoint`.

    Returns:
        CanonicalCheckpoint: Canonical tensors, detected format and constructor hints.
    """
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source)
    where = str(raw.files[0].parent if raw.hf_config is not None else raw.files[0])
    converted = to_canonical(raw.state_dict, where=where)
    hints, declared, by = {}, None, ''
    if raw.hf_config is not None:
        by = str(raw.files[0].parent / 'config.json')
        try:
            hints = hf_arch_kwargs(raw.hf_config, where=by)
            hints['head_norm_eps'] = hf_head_norm_eps(raw.hf_config, where=by)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        declared = ArchSpec(hints.pop('depths'), hints.pop('dims'))
    if raw.meta:
        by = 'its meta'
        hints.update({k: raw.meta[k] for k in ('act', 'head_norm_eps') if k in raw.meta})
        if 'depths' in raw.meta and 'dims' in raw.meta:
            declared = ArchSpec(tuple(raw.meta['depths']), tuple(raw.meta['dims']))
    if declared is not None:
        check_declared_arch(declared, converted.state_dict, where, by)
    return CanonicalCheckpoint(converted.state_dict, converted.format.name, raw.source, converted.dropped, hints,
                               declared)


# ------------------------------------------------------------------------------------------- loading
def _policy(model: nn.Module) -> LoadPolicy:
    """The model's declared load policy; a module that declares none gets the strictest."""
    policy = getattr(model, 'load_policy', None)
    return policy() if callable(policy) else LoadPolicy()


def _check_hints(model: nn.Module, ckpt: CanonicalCheckpoint) -> None:
    """Refuse what shapes cannot show: a checkpoint recorded with another activation than the model's."""
    act = ckpt.hints.get('act')
    if act is not None and getattr(model, 'act', act) != act:
        raise CheckpointError(f'{ckpt.source} was made with act={act!r} (hidden_act), but the model uses '
                              f"act={model.act!r}; build it with act={act!r} (from_pretrained does)")


def load_canonical(model: nn.Module, ckpt: CanonicalCheckpoint) -> LoadReport:
    """Load a canonical checkpoint into ``model`` strictly and report what happened.

    Args:
        model (nn.Module): A :class:`ConvNeXtV2` or :class:`ConvNeXtV2Classifier`, whose
            ``load_policy()`` says what may be missing or unused (any other module with our key space is
            loaded with no key allowed missing or unused).
        ckpt (CanonicalCheckpoint): From :func:`read_canonical`.

    Raises:
        CheckpointError: An arch mismatch, or a missing, unexpected or mis-shaped key.
    """
    spec = ckpt.arch
    model_spec = getattr(model, 'arch_spec', None)
    if model_spec is not None and not covers_built_stages(spec, model_spec, getattr(model, 'num_built_stages', None)):
        raise CheckpointError(f'{ckpt.source} holds a ConvNeXt V2-{describe_arch(spec)}, but the model is a '
                              f'ConvNeXt V2-{describe_arch(model_spec)}; build the model with the '
                              "checkpoint's arch (or use from_pretrained, which infers it)")
    _check_hints(model, ckpt)
    held, built = len(stage_depths(ckpt.state_dict)), getattr(model, 'num_built_stages', None)
    if built is not None and held < built:
        raise CheckpointError(f'{ckpt.source} holds only the first {held} stages of its ConvNeXt V2-'
                              f'{describe_arch(spec)} (saved by a backbone that returned no later stage), but the '
                              f'model runs {built}; select stages up to stage{held} (out_indices up to {held - 1})')
    expected = model.state_dict()
    model_keys, ckpt_keys = set(expected), set(ckpt.state_dict)
    policy = _policy(model)
    optional = {k for k in model_keys - ckpt_keys if policy.allows_missing(k)}
    ignorable = {k for k in ckpt_keys - model_keys if policy.allows_unused(k)}
    skipped = {k for k in ignorable if policy.is_skipped_stage(k)}
    missing = sorted(model_keys - ckpt_keys - optional)
    unexpected = sorted(ckpt_keys - model_keys - ignorable)
    shapes = sorted(f'{k}: checkpoint {tuple(ckpt.state_dict[k].shape)}, model {tuple(expected[k].shape)}'
                    for k in model_keys & ckpt_keys if ckpt.state_dict[k].shape != expected[k].shape)
    problems = []
    if missing:
        grn = ' (a GRN left at zero is a silent identity)' if any('.grn.' in k for k in missing) else ''
        problems.append(f'missing keys{grn}: {abbreviate(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {abbreviate(unexpected)}')
    if shapes:
        problems.append(f'shape mismatches: {abbreviate(shapes, 4)}')
    if problems:
        raise CheckpointError(f'cannot load {ckpt.source} ({ckpt.format} format) into '
                              f'{type(model).__name__}: ' + '; '.join(problems))
    wanted = {k: v for k, v in ckpt.state_dict.items() if k in model_keys}
    result = model.load_state_dict(wanted, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - optional:
        raise CheckpointError(f'loading {ckpt.source} left missing keys {result.missing_keys} and '
                              f'unexpected keys {result.unexpected_keys}')
    return LoadReport(format=ckpt.format, source=ckpt.source, arch=describe_arch(spec),
                      loaded=tuple(k for k in expected if k in wanted),
                      new=tuple(k for k in expected if k not in wanted),
                      ignored=tuple(sorted(ignorable - skipped)) + ckpt.dropped, skipped=tuple(sorted(skipped)))


def load_weights(model: nn.Module, source: str | os.PathLike) -> LoadReport:
    """Load a checkpoint of any supported format into an existing model, strictly.

    Args:
        model (nn.Module): A :class:`ConvNeXtV2` backbone or :class:`ConvNeXtV2Classifier` of the
            checkpoint's arch.
        source (str | PathLike): A file, HF transformers folder, URL or HF hub repo id.

    Returns:
        LoadReport: What was loaded, left fresh and ignored.
    """
    return load_canonical(model, read_canonical(source))


def _accepts(cls: type, name: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _build_for_loading(cls: type[M], **kwargs: Any) -> M:
    """Build ``cls`` without random initialisation: on the meta device, then allocated on the CPU.

    The strict load that follows overwrites every tensor except the fresh output norms, whose ordinary
    ones/zeros start is restored here. This saves most of the build time of the large archs (about 10 s
    for huge) without touching any global state.
    """
    with torch.device('meta'):
        model = cls(**kwargs)
    model.to_empty(device='cpu')
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    return model


def load_pretrained(cls: type[M], source: str | os.PathLike, **overrides: Any) -> M:
    """Build ``cls`` with the checkpoint's arch and load the checkpoint strictly.

    Args:
        cls (type): :class:`ConvNeXtV2` or :class:`ConvNeXtV2Classifier` (or a subclass).
        source (str | PathLike): A file, HF transformers folder, URL or HF hub repo id.
        **overrides: Constructor arguments. ``arch`` (or ``depths`` and ``dims``) must agree with the
            checkpoint. Everything else the checkpoint records is the default: ``in_channels`` and
            ``patch_size`` (stem shape), a classifier's ``num_classes`` (head shape), and from an HF
            ``config.json`` every architecture field (``hidden_act``, ``layer_norm_eps`` as a classifier's
            ``head_norm_eps``, ``drop_path_rate``, ``initializer_range``; see
            :mod:`convnextv2_dense.models.hf_config`). The stage selection is not read from
            ``config.json``: pass ``out_indices`` / ``out_features`` (default: every stage).

    Returns:
        The loaded model, with its :class:`LoadReport` as ``model.load_report``.

    Raises:
        ValueError: ``arch`` / ``depths`` / ``dims`` disagreeing with the checkpoint.
        CheckpointError: Any key problem (a ``ValueError`` too).
    """
    ckpt = read_canonical(source)
    spec = ckpt.arch
    kwargs = dict(overrides)
    arch, depths, dims = kwargs.pop('arch', None), kwargs.pop('depths', None), kwargs.pop('dims', None)
    if arch is not None or depths is not None or dims is not None:
        wanted = resolve_arch(arch, depths, dims)
        if wanted != spec:
            given = f'arch={arch!r}' if arch is not None else f'depths={depths}, dims={dims}'
            raise ValueError(f'{given} disagrees with the checkpoint {ckpt.source}, which holds a '
                             f'ConvNeXt V2-{describe_arch(spec)}; leave the arch out to infer it')
    for name, value in ckpt.hints.items():
        if name not in kwargs and _accepts(cls, name):
            kwargs[name] = value
    stem = ckpt.state_dict.get('downsample_layers.0.0.weight')
    if stem is not None and stem.ndim == 4:  # what the shapes say, where no override or config said it
        kwargs.setdefault('in_channels', int(stem.shape[1]))
        kwargs.setdefault('patch_size', int(stem.shape[-1]))
    head = ckpt.state_dict.get('head.weight')
    if head is not None and 'num_classes' not in kwargs and _accepts(cls, 'num_classes'):
        kwargs['num_classes'] = int(head.shape[0])
    model = _build_for_loading(cls, depths=spec.depths, dims=spec.dims, **kwargs)
    model.load_report = load_canonical(model, ckpt)
    return model


# -------------------------------------------------------------------------------------------- saving
def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write canonical tensors in our format.

    Args:
        state_dict (Mapping[str, torch.Tensor]): Tensors under canonical keys.
        path (str | PathLike): ``*.safetensors`` (meta as JSON in the metadata), or anything else for
            ``torch.save`` of ``{'state_dict': ..., 'meta': ...}`` (plain tensors and dicts only, so
            ``torch.load(weights_only=True)`` reads it).
        meta (Mapping, optional): Extra entries for the meta dict; ``depths`` and ``dims`` there
            declare the arch (else it is inferred from the tensors). Defaults to None.

    Returns:
        Path: The written file.
    """
    path = Path(path)
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in state_dict.items()}
    meta = dict(meta or {})
    if 'depths' in meta and 'dims' in meta:  # declared (a backbone may hold only its first stages)
        spec = ArchSpec(tuple(meta['depths']), tuple(meta['dims']))
        check_declared_arch(spec, tensors, str(path), 'the meta given')
    else:
        spec = infer_arch(tensors, str(path))
    info = {'format': META_KEY, 'version': FORMAT_VERSION, 'arch': arch_name(spec),
            'depths': list(spec.depths), 'dims': list(spec.dims), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(tensors, str(path), metadata={'format': 'pt', META_KEY: json.dumps(info)})
    else:
        torch.save({'state_dict': tensors, 'meta': info}, str(path))
    return path


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Save a :class:`ConvNeXtV2` or :class:`ConvNeXtV2Classifier` in our format.

    Args:
        model (nn.Module): The model; its ``state_dict()`` is already in our key space.
        path (str | PathLike): ``*.safetensors`` or ``*.pth``.
        meta (Mapping, optional): Extra meta entries. Defaults to None.

    Returns:
        Path: The written file.
    """
    info = dict(meta or {})
    norm = getattr(model, 'norm', None)
    if isinstance(norm, nn.LayerNorm):
        info.setdefault('head_norm_eps', norm.eps)
    spec = getattr(model, 'arch_spec', None)
    if spec is not None:  # a backbone that builds only its first stages still declares its whole arch
        info.setdefault('depths', list(spec.depths))
        info.setdefault('dims', list(spec.dims))
    if isinstance(getattr(model, 'act', None), str):
        info.setdefault('act', model.act)
    return save_state_dict(model.state_dict(), path, info)
