"""Reading what users point tools/infer.py at: odd image modes, EXIF rotation, folders, globs, bad files."""
import numpy as np
import pytest
from PIL import Image

from convnextv2_dense.inference.sources import (InferenceInputError, find_sources, iter_frames, read_image,
                                                 to_rgb)


def _gradient(height=6, width=10):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 20, y * 30, x + y], axis=2).astype(np.uint8)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.arange(60, dtype=np.uint8).reshape(6, 10)).save(tmp_path / 'g.png')
    rgb = read_image(str(tmp_path / 'g.png'))
    assert rgb.shape == (6, 10, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb[0, 5, 1] == 5


def test_rgba_drops_alpha_and_keeps_colours(tmp_path):
    rgba = np.dstack([_gradient(), np.full((6, 10), 7, np.uint8)])
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
    assert (read_image(str(tmp_path / 'a.png')) == _gradient()).all()


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    image = Image.fromarray(np.array([[0, 65535], [32768, 256]], dtype=np.uint16))
    assert to_rgb(image)[..., 0].tolist() == [[0, 255], [128, 1]]


def test_exif_orientation_is_applied(tmp_path):
    pixels = _gradient(6, 10)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    image.save(tmp_path / 'phone.jpg', exif=exif, quality=100)
    rgb = read_image(str(tmp_path / 'phone.jpg'))
    assert rgb.shape == (10, 6, 3)
    expected = np.rot90(pixels, k=-1)
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() < 4


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not a jpeg at all')
    with pytest.raises(InferenceInputError, match=r"cannot read image .*broken\.jpg"):
        read_image(str(bad))


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(InferenceInputError, match=r"input not found: .*nope\.jpg"):
        find_sources([str(tmp_path / 'nope.jpg')])


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(InferenceInputError, match='holds no image or video file'):
        find_sources([str(tmp_path)])


def test_unknown_extension_is_an_error(tmp_path):
    (tmp_path / 'data.csv').write_text('x')
    with pytest.raises(InferenceInputError, match='neither an image nor a video'):
        find_sources([str(tmp_path / 'data.csv')])


def test_folder_glob_and_file_expand_with_unique_names(tmp_path):
    (tmp_path / 'sub').mkdir()
    for name in ('b.png', 'a.jpg', 'sub/a.png'):
        Image.fromarray(_gradient()).save(tmp_path / name)
    from_folder = find_sources([str(tmp_path)])
    assert [s.name for s in from_folder] == ['a', 'b', 'sub/a']
    from_glob = find_sources([str(tmp_path / '*.png'), str(tmp_path / 'sub' / 'a.png')])
    assert [s.name for s in from_glob] == ['b', 'a']
    with pytest.raises(InferenceInputError, match='matches no image'):
        find_sources([str(tmp_path / '*.bmp')])


def test_video_frames_are_read_in_order(tmp_path):
    cv2 = pytest.importorskip('cv2')
    path = str(tmp_path / 'clip.avi')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 5, (32, 24))
    for value in (0, 120, 240):
        writer.write(np.full((24, 32, 3), value, np.uint8))
    writer.release()
    (source,) = find_sources([path])
    frames = list(iter_frames(source))
    assert source.is_video and [f.name for f in frames] == ['clip/000000', 'clip/000001', 'clip/000002']
    assert frames[0].rgb.shape == (24, 32, 3)
    assert [round(float(f.rgb.mean()) / 40) for f in frames] == [0, 3, 6]
