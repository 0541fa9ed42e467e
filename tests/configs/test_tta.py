"""``tools/test.py --tta`` on the UperNet configs: the paper's multi-scale test, as the base's comment says.

The TTA pipeline of a shipped config is built by mmseg's own transforms and run on a synthetic image and
label map; each of its 10 outputs must have the size and flip of one (ratio, flip) pair.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('mmseg')

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import Compose  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
RATIOS = (0.75, 0.875, 1.0, 1.125, 1.25)  # of 2048x512 (Woo et al., 2023, appendix)


@pytest.fixture(scope='module')
def tta_outputs(tmp_path_factory) -> tuple[tuple[int, int], list]:
    """(original (h, w), the packed outputs) of the TTA pipeline of the base UperNet config."""
    cfg = Config.fromfile(str(CONFIGS / 'upernet_convnextv2_base_ade20k.py'))
    init_default_scope(cfg.default_scope)
    folder = tmp_path_factory.mktemp('tta')
    h, w = 300, 400  # 3:4, like most ADE20K images; fits every 2048r x 512r box by its short side
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / 'img.jpg')
    Image.fromarray(rng.integers(0, 151, (h, w), dtype=np.uint8)).save(folder / 'seg.png')
    results = Compose(cfg.tta_pipeline)(dict(img_path=str(folder / 'img.jpg'), seg_map_path=str(folder / 'seg.png'),
                                             reduce_zero_label=True, seg_fields=[]))
    return (h, w), list(zip(results['inputs'], results['data_samples']))


def test_tta_runs_every_ratio_with_and_without_flip(tta_outputs):
    _, outputs = tta_outputs
    seen = sorted((s.img_shape[0], bool(s.flip)) for _, s in outputs)
    assert seen == sorted((round(512 * r), flip) for r in RATIOS for flip in (False, True))


def test_tta_keeps_the_aspect_ratio_and_flips_the_pixels(tta_outputs):
    (h, w), outputs = tta_outputs
    by_key = {(s.img_shape[0], bool(s.flip)): image for image, s in outputs}
    for image, sample in outputs:
        short = round(512 * RATIOS[[round(512 * r) for r in RATIOS].index(sample.img_shape[0])])
        assert tuple(sample.img_shape) == (short, round(w * short / h))
        assert tuple(image.shape) == (3, *sample.img_shape)
        assert sample.ori_shape == (h, w) and sample.flip_direction in ('horizontal', None)
    plain, flipped = by_key[(512, False)], by_key[(512, True)]
    assert (flipped == plain.flip(-1)).all() and not (flipped == plain).all()

