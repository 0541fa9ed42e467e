"""Pictures of predictions: colour overlays of label maps and of detected instances, and palettes.

Plain numpy and Pillow, so drawing costs milliseconds and needs no display or matplotlib.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHA = 0.5  # how much of the prediction's colour an overlay pixel takes


def make_palette(num_classes: int, given: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """One RGB colour per class: the dataset's palette when it has enough colours, else fixed random ones.

    Args:
        num_classes (int): Number of classes.
        given (Sequence[Sequence[int]], optional): A dataset's palette. Defaults to None.

    Returns:
        np.ndarray: ``(num_classes, 3)`` uint8.
    """
    if given is not None and len(given) >= num_classes:
        return np.asarray(given[:num_classes], dtype=np.uint8).reshape(num_classes, 3)
    rng = np.random.default_rng(0)
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def overlay_labels(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Blend each pixel with its class colour; pixels labelled ``ignore_index`` (or beyond the palette) stay.

    Args:
        rgb (np.ndarray): ``(H, W, 3)`` uint8 image.
        labels (np.ndarray): ``(H, W)`` integer class indices.
        palette (np.ndarray): ``(C, 3)`` uint8 colours.
        ignore_index (int): Label that is left undrawn. Defaults to 255.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    valid = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    colours = palette[np.where(valid, labels, 0)].astype(np.float32)
    blended = rgb.astype(np.float32) * (1 - ALPHA) + colours * ALPHA
    return np.where(valid[..., None], blended + 0.5, rgb).astype(np.uint8)


def overlay_instances(rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                      masks: np.ndarray | None, class_names: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """Draw instance masks (blended), boxes and ``'name 0.97'`` captions on an image.

    Args:
        rgb (np.ndarray): ``(H, W, 3)`` uint8 image.
        boxes (np.ndarray): ``(N, 4)`` boxes ``x1, y1, x2, y2`` in pixels.
        labels (np.ndarray): ``(N,)`` class indices.
        scores (np.ndarray): ``(N,)`` scores.
        masks (np.ndarray, optional): ``(N, H, W)`` booleans, or None for a box-only detector.
        class_names (Sequence[str]): Names by class index.
        palette (np.ndarray): ``(C, 3)`` uint8 colours.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    from PIL import Image, ImageDraw
    canvas = rgb.astype(np.float32)
    if masks is not None:
        for mask, label in zip(masks, labels):
            canvas[mask] = canvas[mask] * (1 - ALPHA) + palette[label].astype(np.float32) * ALPHA
    image = Image.fromarray((canvas + 0.5).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for box, label, score in zip(boxes, labels, scores):
        colour = tuple(int(c) for c in palette[label])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=max(1, round(min(image.size) / 200)))
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        caption = f'{name} {score:.2f}'
        left, top, right, bottom = draw.textbbox((0, 0), caption)
        text_w, text_h = right - left + 2, bottom - top + 2
        x = max(0.0, min(x1, image.width - text_w))  # keep the caption inside the picture
        y = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle((x, y, x + text_w, y + text_h), fill=colour)
        draw.text((x + 1, y - top), caption, fill=(0, 0, 0))
    return np.asarray(image)


def pca_picture(feature: np.ndarray) -> np.ndarray:
    """The first three principal components of a ``(C, H, W)`` feature map as an RGB picture.

    Every pixel's C-vector is projected on the three directions of largest variance over the map; each
    component is then stretched to 0..255 over its 1st..99th percentile. Sign is fixed so that a
    component's largest loading is positive, which keeps pictures of similar maps alike.

    Args:
        feature (np.ndarray): ``(C, H, W)`` float feature map.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    channels, height, width = feature.shape
    x = feature.reshape(channels, -1).T.astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:3]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    projected = x @ (components * signs[:, None]).T
    if projected.shape[1] < 3:  # fewer than three channels or pixels
        projected = np.pad(projected, ((0, 0), (0, 3 - projected.shape[1])))
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    scaled = (projected - low) / np.maximum(high - low, 1e-12)
    return (scaled.clip(0, 1) * 255 + 0.5).astype(np.uint8).reshape(height, width, 3)
