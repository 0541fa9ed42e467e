"""What ``tools/infer.py`` reads: images, folders, globs and video files, as RGB frames with names.

Images are read with Pillow, turned upright by their EXIF orientation (phone pictures), and converted
to 8-bit RGB whatever their mode (grayscale, palette, RGBA, 16-bit). A missing path, an empty folder or
glob, and an unreadable file are each an :class:`InferenceInputError` that names the path.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif',
                                     '.ppm', '.pgm')
VIDEO_EXTENSIONS: tuple[str, ...] = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')


class InferenceInputError(ValueError):
    """An input that cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Source:
    """One image file, or one video file whose frames are read one by one.

    Args:
        path (str): The file.
        name (str): Output name without extension, relative to the input folder (``'sub/img1'``).
        is_video (bool): Whether ``path`` is a video. Defaults to False.
    """

    path: str
    name: str
    is_video: bool = False


@dataclass(frozen=True)
class Frame:
    """An image ready for a model.

    Args:
        name (str): Output name without extension (``'img1'``, ``'clip/000012'`` for a video frame).
        path (str): The file it came from.
        rgb (np.ndarray): ``(H, W, 3)`` uint8 pixels, upright.
        index (int): Frame number within a video; 0 for an image. Defaults to 0.
    """

    name: str
    path: str
    rgb: np.ndarray
    index: int = 0

    @property
    def bgr(self) -> np.ndarray:
        """The pixels in OpenCV's / mmcv's channel order, contiguous."""
        return np.ascontiguousarray(self.rgb[..., ::-1])


def _kind(path: str) -> str | None:
    ext = osp.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return 'image'
    if ext in VIDEO_EXTENSIONS:
        return 'video'
    return None


def _stem(path: str, root: str) -> str:
    return osp.splitext(osp.relpath(path, root))[0].replace(os.sep, '/')


def find_sources(inputs: Sequence[str]) -> list[Source]:
    """Expand images, folders (searched recursively), globs and video files into a list of sources.

    Args:
        inputs (Sequence[str]): What the user typed.

    Returns:
        list[Source]: In the order given; a folder's or glob's files sorted by path. Output names are
        unique (a clash gets the parent folder's name in front).
    """
    if not inputs:
        raise InferenceInputError('no input given: name an image, a folder, a glob or a video file')
    sources: list[Source] = []
    for item in inputs:
        if osp.isdir(item):
            files = sorted(osp.join(d, f) for d, _, names in os.walk(item) for f in names if _kind(f))
            if not files:
                raise InferenceInputError(f'folder {item!r} holds no image or video file '
                                          f'(looked for {", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})')
            sources += [Source(f, _stem(f, item), _kind(f) == 'video') for f in files]
        elif osp.isfile(item):
            if _kind(item) is None:
                raise InferenceInputError(f'{item!r} is neither an image nor a video file (by its extension; '
                                          f'images: {", ".join(IMAGE_EXTENSIONS)}; videos: '
                                          f'{", ".join(VIDEO_EXTENSIONS)})')
            sources.append(Source(item, _stem(item, osp.dirname(item) or '.'), _kind(item) == 'video'))
        elif glob.has_magic(item):
            files = sorted(f for f in glob.glob(item, recursive=True) if osp.isfile(f) and _kind(f))
            if not files:
                raise InferenceInputError(f'glob {item!r} matches no image or video file')
            sources += [Source(f, _stem(f, osp.dirname(f) or '.'), _kind(f) == 'video') for f in files]
        else:
            raise InferenceInputError(f'input not found: {item!r} (no such file or folder)')
    return _unique_names(sources)


def _unique_names(sources: list[Source]) -> list[Source]:
    """Give a clashing output name a ``_2``, ``_3``... suffix (two inputs with the same file name)."""
    seen: set[str] = set()
    unique = []
    for src in sources:
        name, k = src.name, 1
        while name in seen:
            k += 1
            name = f'{src.name}_{k}'
        seen.add(name)
        unique.append(Source(src.path, name, src.is_video))
    return unique


def read_image(path: str) -> np.ndarray:
    """Read an image file as upright 8-bit RGB.

    Args:
        path (str): The file.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not osp.isfile(path):
        raise InferenceInputError(f'image not found: {path!r}')
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except UnidentifiedImageError:
        raise InferenceInputError(f'cannot read image {path!r}: not an image format Pillow knows') from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt files
        raise InferenceInputError(f'cannot read image {path!r}: {err}') from None


def to_rgb(image: 'PIL.Image.Image') -> np.ndarray:  # noqa: F821
    """Any Pillow mode to ``(H, W, 3)`` uint8 RGB: 16-bit and float grayscale are scaled, alpha dropped.

    Args:
        image (PIL.Image.Image): An opened image.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8.
    """
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith('I;16') else max(float(values.max()), 1.0)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == 'P' and 'transparency' in image.info:
        image = image.convert('RGBA')
    return np.array(image.convert('RGB'), dtype=np.uint8)


def iter_frames(source: Source) -> Iterator[Frame]:
    """The frames of one source: one for an image, every frame of a video (read lazily).

    Args:
        source (Source): From :func:`find_sources`.

    Yields:
        Frame: Upright RGB pixels with an output name.
    """
    if not source.is_video:
        yield Frame(source.name, source.path, read_image(source.path))
        return
    import cv2
    capture = cv2.VideoCapture(source.path)
    if not capture.isOpened():
        raise InferenceInputError(f'cannot read video {source.path!r}: OpenCV could not open it')
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(f'{source.name}/{index:06d}', source.path, np.ascontiguousarray(bgr[..., ::-1]), index)
            index += 1
        if index == 0:
            raise InferenceInputError(f'cannot read video {source.path!r}: no frame could be decoded')
    finally:
        capture.release()


def video_fps(path: str) -> float:
    """Frames per second of a video file (25 when the file does not say)."""
    import cv2
    capture = cv2.VideoCapture(path)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if fps and fps > 0 else 25.0


def count_frames(sources: Sequence[Source]) -> int | None:
    """How many frames :func:`iter_frames` will yield in all, for the progress bar (None if unknown)."""
    total = 0
    for src in sources:
        if not src.is_video:
            total += 1
            continue
        import cv2
        capture = cv2.VideoCapture(src.path)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        capture.release()
        if frames <= 0:
            return None
        total += frames
    return total
