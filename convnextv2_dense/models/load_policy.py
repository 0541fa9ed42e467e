"""What a model lets a checkpoint lack, and what of a checkpoint it may leave unused.

Each model class declares this itself (as HF's ``_keys_to_ignore_on_load_missing`` /
``_keys_to_ignore_on_load_unexpected`` do), by the position kinds of :mod:`.naming` rather than by
regexes; the weight loader only reads the declaration. Everything not declared is strict: a missing
GRN left at zero would be a silent identity.
"""
from __future__ import annotations

from dataclasses import dataclass

from .naming import KINDS, parse_param_name


@dataclass(frozen=True)
class LoadPolicy:
    """The load policy of one model instance.

    Args:
        may_be_missing (frozenset[str]): Position kinds (see :data:`~.naming.KINDS`) of model tensors
            a checkpoint may lack; they stay freshly initialised (a backbone's output norms).
        may_be_unused (frozenset[str]): Position kinds of checkpoint tensors the model may leave
            unused (a classifier's pooled norm and head when loading a backbone; output norms).
        built_stages (int, optional): How many stages the model builds. Checkpoint tensors of later
            stages and of their downsamplers may be unused: the model never runs them. Defaults to
            None (all stages built).
    """

    may_be_missing: frozenset[str] = frozenset()
    may_be_unused: frozenset[str] = frozenset()
    built_stages: int | None = None

    def __post_init__(self) -> None:
        unknown = (self.may_be_missing | self.may_be_unused) - set(KINDS)
        if unknown:
            raise ValueError(f'unknown position kinds {sorted(unknown)}; known kinds: {KINDS}')

    def allows_missing(self, key: str) -> bool:
        """Whether the model tensor ``key`` may be absent from a checkpoint."""
        position = parse_param_name(key)
        return position is not None and position.kind in self.may_be_missing

    def allows_unused(self, key: str) -> bool:
        """Whether the checkpoint tensor ``key`` (not in the model) may be left unused."""
        position = parse_param_name(key)
        return position is not None and (position.kind in self.may_be_unused or self.is_skipped_stage(key))

    def is_skipped_stage(self, key: str) -> bool:
        """Whether ``key`` belongs to a stage (or its downsampler) that the model does not build."""
        position = parse_param_name(key)
        return (position is not None and self.built_stages is not None
                and position.kind in ('downsample', 'block') and position.stage >= self.built_stages)
