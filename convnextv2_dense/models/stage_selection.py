"""Which stages a backbone returns: HF ``out_features`` names or OpenMMLab ``out_indices``.

``out_features`` follows HF transformers' rules on the names ``('stem', 'stage1', ..., 'stage4')``.
``out_indices`` follows the OpenMMLab convention every mm config uses: index ``i`` is stage ``i + 1``
(0..3) and negatives count from the end; HF's own ``out_indices`` differ (0 is the stem), so HF-style
configs should select by name.
"""
from __future__ import annotations

from collections.abc import Sequence

STAGE_NAMES: tuple[str, ...] = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
INDEXED_STAGES: tuple[str, ...] = STAGE_NAMES[1:]


def _check_sequence(value: object, what: str) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f'{what} must be a list or tuple, got {type(value).__name__} {value!r}')


def _check_ordered_unique(positions: list[int], given: object, what: str, allowed: object) -> None:
    if len(set(positions)) != len(positions):
        raise ValueError(f'{what} must not contain duplicates, got {given!r}')
    if positions != sorted(positions):
        raise ValueError(f'{what} must be in stage order {allowed!r}, got {given!r}')


def _from_names(out_features: object) -> tuple[str, ...]:
    _check_sequence(out_features, 'out_features')
    unknown = [name for name in out_features if name not in STAGE_NAMES]
    if unknown:
        raise ValueError(f'out_features must be a subset of {list(STAGE_NAMES)}, '
                         f'got {list(out_features)!r} ({unknown!r} unknown)')
    if not out_features:
        raise ValueError(f'out_features must name at least one of {list(STAGE_NAMES)}, got an empty list')
    _check_ordered_unique([STAGE_NAMES.index(n) for n in out_features], list(out_features),
                          'out_features', list(STAGE_NAMES))
    return tuple(out_features)


def _from_indices(out_indices: object) -> tuple[str, ...]:
    _check_sequence(out_indices, 'out_indices')
    n = len(INDEXED_STAGES)
    bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise ValueError(f'out_indices must be integers in [{-n}, {n - 1}] (0 = stage1, -1 = stage4), '
                         f'got {tuple(out_indices)!r} ({bad!r} invalid)')
    if not out_indices:
        raise ValueError(f'out_indices must select at least one stage (integers in [{-n}, {n - 1}]), got an empty list')
    positions = [i % n for i in out_indices]
    _check_ordered_unique(positions, tuple(out_indices), 'out_indices', tuple(range(n)))
    return tuple(INDEXED_STAGES[p] for p in positions)


def select_stages(out_features: Sequence[str] | None = None,
                  out_indices: Sequence[int] | None = None) -> tuple[str, ...]:
    """Validate a stage selection and return the selected stage names in order.

    Args:
        out_features (Sequence[str], optional): HF stage names, a subset of :data:`STAGE_NAMES` without
            duplicates, in stage order. Defaults to None.
        out_indices (Sequence[int], optional): OpenMMLab indices, 0 = stage1 .. 3 = stage4, negatives
            from the end, without duplicates, in order. Defaults to None.

    Returns:
        tuple[str, ...]: The selected stage names. All four stages when neither argument is given.

    Raises:
        ValueError: On any rule broken, naming what was given and what is allowed. Neither input is
            modified.
    """
    by_name = None if out_features is None else _from_names(out_features)
    by_index = None if out_indices is None else _from_indices(out_indices)
    if by_name is not None and by_index is not None and by_name != by_index:
        raise ValueError(f'out_features {list(out_features)!r} and out_indices {tuple(out_indices)!r} '
                         f'must name the same stages; out_indices select {list(by_index)!r} '
                         '(OpenMMLab convention: 0 = stage1)')
    return by_name or by_index or INDEXED_STAGES


def mm_index(stage: str) -> int | None:
    """The OpenMMLab index of a stage name (0 for stage1), or None for the stem, which has none."""
    return INDEXED_STAGES.index(stage) if stage in INDEXED_STAGES else None
