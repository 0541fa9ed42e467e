"""Overlays and the PCA feature picture."""
import numpy as np

from convnextv2_dense.inference.drawing import make_palette, overlay_instances, overlay_labels, pca_picture


def test_pca_picture_separates_regions_with_different_features():
    rng = np.random.default_rng(0)
    feature = rng.normal(0, 0.05, (16, 8, 8))
    feature[:, :, :4] += rng.normal(0, 1, (16, 1, 1))  # left half: one direction
    feature[:, :, 4:] += rng.normal(0, 1, (16, 1, 1))  # right half: another
    picture = pca_picture(feature)
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
    left, right = picture[:, :4].reshape(-1, 3).mean(0), picture[:, 4:].reshape(-1, 3).mean(0)
    assert np.abs(left - right).max() > 100


def test_pca_picture_of_a_map_with_fewer_than_three_channels():
    assert pca_picture(np.random.default_rng(1).normal(size=(2, 4, 5))).shape == (4, 5, 3)


def test_label_overlay_blends_only_valid_labels():
    rgb = np.zeros((2, 2, 3), np.uint8)
    palette = np.array([[200, 0, 0], [0, 200, 0]], np.uint8)
    out = overlay_labels(rgb, np.array([[0, 1], [255, 1]]), palette)
    assert out[0, 0].tolist() == [100, 0, 0] and out[0, 1].tolist() == [0, 100, 0]
    assert out[1, 0].tolist() == [0, 0, 0]


def test_palette_uses_the_dataset_colours_when_there_are_enough():
    assert make_palette(2, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]).tolist() == [[1, 2, 3], [4, 5, 6]]
    generated = make_palette(5, [[1, 2, 3]])
    assert generated.shape == (5, 3) and (generated == make_palette(5)).all()


def test_instance_overlay_draws_masks_and_boxes():
    rgb = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 10:30, 10:30] = True
    out = overlay_instances(rgb, np.array([[10.0, 10, 30, 30]]), np.array([0]), np.array([0.9]), mask,
                            ['thing'], np.array([[0, 250, 0]], np.uint8))
    assert out[27, 20].tolist() == [0, 125, 0]  # mask blended (below the caption)
    assert out[35, 50].tolist() == [0, 0, 0]  # background untouched
