"""Drawing for the synthetic demo datasets: textured backgrounds and shapes coloured by kind.

Both demo writers (ADE20K-style label maps and COCO-style instances) draw their images here, so the
two datasets look alike and differ only in how the shapes are annotated. Shapes live in COCO's
continuous pixel coordinates (pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``) and are rasterised
with pycocotools, so a mask drawn into an image is exactly the mask a COCO polygon decodes to.

Colours and textures are drawn at random for every instance, independently of its kind, so only the
outline tells the kinds apart. Imports numpy and pycocotools only.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pycocotools import mask as mask_utils

SHAPE_KINDS: tuple[str, ...] = ('circle', 'square', 'triangle', 'ring')
CIRCLE_VERTICES = 24


@dataclass(frozen=True)
class Shape:
    """One shape in continuous pixel coordinates.

    Args:
        kind (str): One of :data:`SHAPE_KINDS`.
        cx (float): Centre, x.
        cy (float): Centre, y.
        radius (float): Radius of the circumscribed circle, in pixels.
        angle (float): Rotation in radians.
        inner (float): For rings, the hole's radius as a fraction of ``radius``;
            for triangles, the jitter of the second and third corner in radians.
            Defaults to 0.
    """

    kind: str
    cx: float
    cy: float
    radius: float
    angle: float
    inner: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f'unknown shape kind {self.kind!r}, allowed: {SHAPE_KINDS}')

    def _ring_polygon(self, radius: float, num: int) -> np.ndarray:
        """A regular ``num``-gon around the centre, rotated by ``angle``."""
        t = self.angle + 2 * math.pi * np.arange(num) / num
        return np.stack([self.cx + radius * np.cos(t), self.cy + radius * np.sin(t)], axis=1)

    def polygon(self) -> np.ndarray:
        """The outline as an ``(N, 2)`` array of ``(x, y)`` vertices.

        Returns:
            np.ndarray: Vertices in order; a ring's outline is its outer circle.
        """
        if self.kind in ('circle', 'ring'):
            return self._ring_polygon(self.radius, CIRCLE_VERTICES)
        if self.kind == 'square':
            return self._ring_polygon(self.radius, 4)
        t = self.angle + np.array([0.0, 2 * math.pi / 3 + self.inner, 4 * math.pi / 3 - self.inner])
        return np.stack([self.cx + self.radius * np.cos(t), self.cy + self.radius * np.sin(t)], axis=1)

    def hole(self) -> np.ndarray | None:
        """The hole of a ring as an ``(N, 2)`` polygon, None for other kinds."""
        if self.kind != 'ring':
            return None
        return self._ring_polygon(self.radius * self.inner, CIRCLE_VERTICES)

    def grown(self, margin: float) -> Shape:
        """The same shape with its radius grown by ``margin`` pixels (holes filled)."""
        kind = 'circle' if self.kind == 'ring' else self.kind
        return replace(self, kind=kind, radius=self.radius + margin, inner=0.0 if kind == 'circle' else self.inner)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Rasterise the shape as COCO does.

        Args:
            height (int): Image height.
            width (int): Image width.

        Returns:
            np.ndarray: Boolean mask of shape ``(height, width)``.
        """
        mask = polygon_mask(self.polygon(), height, width)
        hole = self.hole()
        if hole is not None:
            mask &= ~polygon_mask(hole, height, width)
        return mask


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise one polygon with pycocotools.

    Args:
        polygon (np.ndarray): ``(N, 2)`` vertices in continuous pixel coordinates.
        height (int): Image height.
        width (int): Image width.

    Returns:
        np.ndarray: Boolean mask of shape ``(height, width)``.
    """
    rles = mask_utils.frPyObjects([polygon.astype(np.float64).ravel().tolist()], height, width)
    with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's __array__(copy=...)
        warnings.simplefilter('ignore', DeprecationWarning)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def random_shape(rng: np.random.Generator, kind: str, size: int,
                 radius_range: tuple[float, float] = (0.1, 0.24)) -> Shape:
    """Draw a shape of the given kind that lies wholly inside a ``size`` x ``size`` image.

    Args:
        rng (np.random.Generator): Random source.
        kind (str): One of :data:`SHAPE_KINDS`.
        size (int): Image side in pixels.
        radius_range (tuple[float, float]): Radius range as fractions of ``size``.
            Defaults to (0.1, 0.24).

    Returns:
        Shape: The shape.
    """
    radius = max(3.0, size * rng.uniform(*radius_range))
    cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
    inner = 0.0
    if kind == 'ring':
        inner = rng.uniform(0.45, 0.65)
    elif kind == 'triangle':
        inner = rng.uniform(-0.25, 0.25)
    return Shape(kind, float(cx), float(cy), float(radius), float(rng.uniform(0, 2 * math.pi)), float(inner))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    pos = np.linspace(0, cells, size)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _gradient(rng: np.random.Generator, size: int, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """A linear colour ramp from ``start`` to ``stop`` along a random direction, ``(size, size, 3)``."""
    t = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = (math.cos(t) * x + math.sin(t) * y)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    return start + ramp[..., None] * (stop - start)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient with blotches and pixel noise.

    Args:
        rng (np.random.Generator): Random source.
        size (int): Image side in pixels.

    Returns:
        np.ndarray: Float image of shape ``(size, size, 3)``, roughly in [0, 255].
    """
    start, stop = rng.uniform(0, 255, size=(2, 3))
    image = _gradient(rng, size, start, stop)
    blotches = _smooth_noise(rng, size, int(rng.integers(2, 6)))
    image += rng.uniform(10, 40) * blotches[..., None] * rng.uniform(0.5, 1.0, size=3)
    return image + rng.normal(0, rng.uniform(2, 10), size=image.shape)


def fill(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """A texture around ``colour``: flat, a gradient or stripes, plus pixel noise.

    Args:
        rng (np.random.Generator): Random source.
        size (int): Image side in pixels.
        colour (np.ndarray): Mean RGB colour.

    Returns:
        np.ndarray: Float image of shape ``(size, size, 3)``.
    """
    style = rng.integers(3)
    image = np.broadcast_to(colour, (size, size, 3)).astype(np.float64)
    if style == 1:
        shift = rng.uniform(-40, 40, size=3)
        image = _gradient(rng, size, colour - shift, colour + shift)
    elif style == 2:
        t, period = rng.uniform(0, math.pi), rng.uniform(3, 8)
        y, x = np.mgrid[0:size, 0:size]
        stripes = np.sign(np.sin((math.cos(t) * x + math.sin(t) * y) * 2 * math.pi / period))
        image = image + rng.uniform(10, 30) * stripes[..., None]
    return image + rng.normal(0, rng.uniform(2, 8), size=image.shape)


# Each kind's colour family: a jittered base colour. The outline alone also tells the kinds apart, but
# a model trained from scratch for a few CPU minutes learns shape far more slowly than colour; the cue
# makes the demos show real learning (classes, not just foreground) within their time budget.
KIND_COLOURS: dict[str, tuple[float, float, float]] = {
    'circle': (200.0, 60.0, 60.0), 'square': (60.0, 170.0, 60.0), 'triangle': (60.0, 90.0, 210.0),
    'ring': (210.0, 190.0, 50.0)}
COLOUR_JITTER = 45.0


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray, kind: str,
                        min_distance: float = 70.0) -> np.ndarray:
    """A colour of ``kind``'s family at least ``min_distance`` (RGB, L2) from ``behind``, or the
    farthest of 32 tries."""
    best, best_dist = behind, -1.0
    base = np.array(KIND_COLOURS[kind])
    for _ in range(32):
        colour = np.clip(base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3), 0, 255)
        dist = float(np.linalg.norm(colour - behind))
        if dist >= min_distance:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


@dataclass(frozen=True)
class Scene:
    """A drawn image and the shapes in it.

    Args:
        image (np.ndarray): ``(size, size, 3)`` uint8 RGB image.
        shapes (tuple[Shape, ...]): The shapes in paint order (later ones on top).
        masks (tuple[np.ndarray, ...]): Each shape's visible boolean mask.
    """

    image: np.ndarray
    shapes: tuple[Shape, ...]
    masks: tuple[np.ndarray, ...]


def _overlaps(mask: np.ndarray, others: Sequence[np.ndarray], max_overlap: float) -> bool:
    """Whether ``mask`` covers more than ``max_overlap`` of itself or of any mask in ``others``."""
    area = mask.sum()
    for other in others:
        inter = np.logical_and(mask, other).sum()
        if inter > max_overlap * min(area, other.sum()) or (max_overlap == 0 and inter > 0):
            return True
    return False


def draw_scene(rng: np.random.Generator, size: int, kinds: Sequence[str], max_overlap: float = 0.0,
               margin: float = 1.0, max_tries: int = 50) -> Scene:
    """Draw a background and place one shape of each given kind on it.

    A shape that cannot be placed within the overlap limit after ``max_tries`` attempts is left out,
    so the scene may hold fewer shapes than ``kinds`` (the first one always fits).

    Args:
        rng (np.random.Generator): Random source.
        size (int): Image side in pixels.
        kinds (Sequence[str]): Kinds of the shapes to place, in paint order.
        max_overlap (float): Largest allowed overlap, as a fraction of the smaller
            of two shapes' areas (holes count as area). 0 means disjoint. Defaults to 0.
        margin (float): Extra clearance in pixels between shapes, tested by growing
            each new shape by this much. Defaults to 1.
        max_tries (int): Placement attempts per shape. Defaults to 50.

    Returns:
        Scene: The image, its shapes and their visible masks.
    """
    image = background(rng, size)
    shapes: list[Shape] = []
    masks: list[np.ndarray] = []
    footprints: list[np.ndarray] = []  # masks with holes filled, so nothing is placed inside a ring
    for kind in kinds:
        for _ in range(max_tries):
            shape = random_shape(rng, kind, size)
            if not _overlaps(shape.grown(margin).mask(size, size), footprints, max_overlap):
                break
        else:
            continue
        mask = shape.mask(size, size)
        behind = image[mask].mean(axis=0) if mask.any() else image.mean(axis=(0, 1))
        texture = fill(rng, size, _contrasting_colour(rng, behind, kind))
        image[mask] = texture[mask]
        masks = [m & ~mask for m in masks] + [mask]
        footprints.append(shape.grown(0.0).mask(size, size))
        shapes.append(shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(pixels, tuple(shapes), tuple(masks))


def label_map(scene: Scene, class_ids: Mapping[str, int], background_id: int,
              ignore_id: int | None = None) -> np.ndarray:
    """Paint a scene's shapes into a semantic label map.

    Args:
        scene (Scene): The scene.
        class_ids (Mapping[str, int]): Label value of each shape kind.
        background_id (int): Label value of the background.
        ignore_id (int, optional): If given, shape pixels on a boundary with a
            different label get this value, as ADE20K's annotations leave thin
            unlabelled seams. Defaults to None.

    Returns:
        np.ndarray: ``(size, size)`` uint8 label map.
    """
    labels = np.full(scene.image.shape[:2], background_id, dtype=np.uint8)
    for shape, mask in zip(scene.shapes, scene.masks):
        labels[mask] = class_ids[shape.kind]
    if ignore_id is not None:
        padded = np.pad(labels, 1, mode='edge')
        seam = np.zeros(labels.shape, dtype=bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            seam |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
        labels[seam & (labels != background_id)] = ignore_id
    return labels
