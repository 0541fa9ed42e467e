"""The ConvNeXt V2 arch table (Woo et al., 2023, arXiv 2301.00808, Table 1 and the official README).

Every V2 model has GRN in each block and no layer scale; an arch is just its depths and widths. The
released archs have four stages; a custom arch may have any number (HF's ``num_stages``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Depths and widths of the stages of one ConvNeXt V2 model.

    Args:
        depths (tuple[int, ...]): Number of blocks in each stage (four for the released archs).
        dims (tuple[int, ...]): Channels of each stage, as many as ``depths``.
    """

    depths: tuple[int, ...]
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        for field, values in (('depths', self.depths), ('dims', self.dims)):
            if (not isinstance(values, tuple) or not values
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
                raise ValueError(f'{field} must be a non-empty tuple of positive integers, got {values!r}')
        if len(self.depths) != len(self.dims):
            raise ValueError(f'depths and dims must have one entry per stage, got {len(self.depths)} depths '
                             f'{self.depths} and {len(self.dims)} dims {self.dims}')

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)


ARCHS: dict[str, ArchSpec] = {
    'atto': ArchSpec((2, 2, 6, 2), (40, 80, 160, 320)),
    'femto': ArchSpec((2, 2, 6, 2), (48, 96, 192, 384)),
    'pico': ArchSpec((2, 2, 6, 2), (64, 128, 256, 512)),
    'nano': ArchSpec((2, 2, 8, 2), (80, 160, 320, 640)),
    'tiny': ArchSpec((3, 3, 9, 3), (96, 192, 384, 768)),
    'base': ArchSpec((3, 3, 27, 3), (128, 256, 512, 1024)),
    'large': ArchSpec((3, 3, 27, 3), (192, 384, 768, 1536)),
    'huge': ArchSpec((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


def resolve_arch(arch: str | None = None,
                 depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None) -> ArchSpec:
    """Turn an arch name, or explicit ``depths`` and ``dims``, into an :class:`ArchSpec`.

    Args:
        arch (str, optional): One of the names in :data:`ARCHS`. Defaults to None.
        depths (tuple[int, ...], optional): Blocks per stage, used with ``dims``
            instead of ``arch``. Defaults to None.
        dims (tuple[int, ...], optional): Channels per stage. Defaults to None.

    Returns:
        ArchSpec: The resolved depths and widths.
    """
    if depths is not None or dims is not None:
        if depths is None or dims is None:
            raise ValueError('depths and dims must be given together, '
                             f'got depths={depths!r} and dims={dims!r}')
        spec = ArchSpec(tuple(depths), tuple(dims))
        if arch is not None and ARCHS.get(arch) != spec:
            raise ValueError(f'arch={arch!r} disagrees with depths={spec.depths} and dims={spec.dims}; '
                             'give either an arch name or depths and dims')
        return spec
    if arch is None:
        raise ValueError(f'give an arch name (one of {", ".join(ARCHS)}) or depths and dims')
    if arch not in ARCHS:
        raise ValueError(f'unknown ConvNeXt V2 arch {arch!r}; known archs: {", ".join(ARCHS)}')
    return ARCHS[arch]


def arch_name(spec: ArchSpec) -> str | None:
    """The name of ``spec`` in :data:`ARCHS`, or None for a custom arch."""
    for name, known in ARCHS.items():
        if known == spec:
            return name
    return None
