"""Which stages a backbone returns: HF ``out_features`` names or OpenMMLab ``out_indices``.

Stage names are HF's: ``('stem', 'stage1', ..., 'stageN')`` for a model of N stages (four for the
released archs). ``out_features`` follows HF transformers' rules on those names. ``out_indices``
follows the OpenMMLab convention every mm config uses: index ``i`` is stage ``i + 1`` (0..N-1) and
negatives count from the end; HF's own ``out_indices`` differ (0 is the stem), so HF-style configs
should select by name (:func:`hf_out_features` translates them). Every rule is a function of the
stage names, so nothing here assumes four stages.
"""
from __future__ import annotations

from collections.abc import Sequence


def stage_names(num_stages: int) -> tuple[str, ...]:
    """``('stem', 'stage1', ..., 'stage{num_stages}')``: HF's ``stage_names`` for ``num_stages`` stages."""
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f'num_stages must be a positive integer, got {num_stages!r}')
    return ('stem', *(f'stage{i}' for i in range(1, num_stages + 1)))


STAGE_NAMES: tuple[str, ...] = stage_names(4)  # the released archs
INDEXED_STAGES: tuple[str, ...] = STAGE_NAMES[1:]


def _check_sequence(value: object, what: str) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f'{what} must be a list or tuple, got {type(value).__name__} {value!r}')


def _check_ordered_unique(positions: list[int], given: object, what: str, allowed: object) -> None:
    if len(set(positions)) != len(positions):
        raise ValueError(f'{what} must not contain duplicates, got {given!r}')
    if positions != sorted(positions):
        raise ValueError(f'{what} must be in stage order {allowed!r}, got {given!r}')


def _from_names(out_features: object, names: tuple[str, ...]) -> tuple[str, ...]:
    _check_sequence(out_features, 'out_features')
    unknown = [name for name in out_features if name not in names]
    if unknown:
        raise ValueError(f'out_features must be a subset of {list(names)}, '
                         f'got {list(out_features)!r} ({unknown!r} unknown)')
    if not out_features:
        raise ValueError(f'out_features must name at least one of {list(names)}, got an empty list')
    _check_ordered_unique([names.index(n) for n in out_features], list(out_features), 'out_features', list(names))
    return tuple(out_features)


def _from_indices(out_indices: object, names: tuple[str, ...]) -> tuple[str, ...]:
    _check_sequence(out_indices, 'out_indices')
    indexed = names[1:]
    n = len(indexed)
    bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise ValueError(f'out_indices must be integers in [{-n}, {n - 1}] (0 = stage1, -1 = {indexed[-1]}), '
                         f'got {tuple(out_indices)!r} ({bad!r} invalid)')
    if not out_indices:
        raise ValueError(f'out_indices must select at least one stage (integers in [{-n}, {n - 1}]), got an empty list')
    positions = [i % n for i in out_indices]
    _check_ordered_unique(positions, tuple(out_indices), 'out_indices', tuple(range(n)))
    return tuple(indexed[p] for p in positions)


def select_stages(out_features: Sequence[str] | None = None,
                  out_indices: Sequence[int] | None = None,
                  names: Sequence[str] = STAGE_NAMES) -> tuple[str, ...]:
    """Validate a stage selection and return the selected stage names in order.

    Args:
        out_features (Sequence[str], optional): HF stage names, a subset of ``names`` without
            duplicates, in stage order. Defaults to None.
        out_indices (Sequence[int], optional): OpenMMLab indices, 0 = stage1 .. N-1 = stageN, negatives
            from the end, without duplicates, in order. Defaults to None.
        names (Sequence[str]): The model's stage names, the stem first (see :func:`stage_names`).
            Defaults to :data:`STAGE_NAMES` (four stages).

    Returns:
        tuple[str, ...]: The selected stage names. Every stage but the stem when neither argument is given.

    Raises:
        ValueError: On any rule broken, naming what was given and what is allowed. Neither input is
            modified.
    """
    names = tuple(names)
    by_name = None if out_features is None else _from_names(out_features, names)
    by_index = None if out_indices is None else _from_indices(out_indices, names)
    if by_name is not None and by_index is not None and by_name != by_index:
        raise ValueError(f'out_features {list(out_features)!r} and out_indices {tuple(out_indices)!r} '
                         f'must name the same stages; out_indices select {list(by_index)!r} '
                         '(OpenMMLab convention: 0 = stage1)')
    return by_name or by_index or names[1:]


def mm_index(stage: str, names: Sequence[str] = STAGE_NAMES) -> int | None:
    """The OpenMMLab index of a stage name (0 for stage1), or None for the stem, which has none."""
    names = tuple(names)
    return names.index(stage) - 1 if stage in names[1:] else None


def hf_out_features(out_indices: Sequence[int], names: Sequence[str]) -> list[str]:
    """Translate HF ``out_indices`` (0 = the stem, negatives modulo the number of names) into names.

    Args:
        out_indices (Sequence[int]): Indices in HF's convention, into ``names``.
        names (Sequence[str]): The stage names, the stem first.

    Returns:
        list[str]: The names, for ``out_features`` (validated by :func:`select_stages` afterwards).
    """
    _check_sequence(out_indices, 'HF out_indices')
    names = tuple(names)
    n = len(names)
    bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise ValueError(f'HF out_indices must be integers in [{-n}, {n - 1}] (HF convention: 0 = stem, '
                         f'{n - 1} = {names[-1]}), got {tuple(out_indices)!r} ({bad!r} invalid)')
    return [names[i % n] for i in out_indices]
