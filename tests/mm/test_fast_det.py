"""RandomSamplerFast / FCNMaskHeadFast give mmdet's results: the same mask targets, the same sampling (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from convnextv2_dense.mm.fast_det import device_random_choice, mask_targets_single  # noqa: E402
from mmdet.registry import MODELS, TASK_UTILS  # noqa: E402
from mmdet.structures.mask import BitmapMasks, PolygonMasks, mask_target  # noqa: E402

H, W = 37, 53


def random_case(seed: int, num_gt: int = 5, num_pos: int = 24, binary: bool = True):
    """One image's masks and positive boxes, some boxes reaching past the image (the clip matters)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((num_gt, H, W))
    masks = (masks > 0.6).astype(np.uint8) if binary else masks.astype(np.float32)
    x1, y1 = rng.uniform(-8, W - 4, num_pos), rng.uniform(-8, H - 4, num_pos)
    boxes = np.stack([x1, y1, x1 + rng.uniform(2, 30, num_pos), y1 + rng.uniform(2, 30, num_pos)], 1)
    inds = rng.integers(0, num_gt, num_pos)
    return (torch.from_numpy(boxes).float(), torch.from_numpy(inds).long(), BitmapMasks(masks, H, W))


@pytest.mark.parametrize('mask_size', [28, (14, 10)])
@pytest.mark.parametrize('soft', [False, True])
def test_mask_targets_equal_mmdets_bit_for_bit(mask_size, soft):
    cases = [random_case(seed, binary=not soft) for seed in range(3)]
    cfg = ConfigDict(mask_size=mask_size, soft_mask_target=soft)
    # clones: on the CPU mmdet clips the boxes in place (through .cpu().numpy(), which shares memory)
    expected = mask_target([c[0].clone() for c in cases], [c[1] for c in cases], [c[2] for c in cases], cfg)
    got = torch.cat([mask_targets_single(*c, mask_size, binarize=not soft) for c in cases])
    assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)
    if not soft:
        assert 0 < got.mean() < 1  # both values occur: a constant target would prove nothing


def test_no_positive_box_gives_an_empty_target():
    boxes, inds, masks = random_case(0, num_pos=0)
    assert mask_targets_single(boxes, inds, masks, 28).shape == (0, 28, 28)


def build_in_mmdet(registry, cfg: dict, **kwargs):
    with DefaultScope.overwrite_default_scope('mmdet'):  # only here: other tests' scopes stay theirs
        return registry.build(cfg, **kwargs)


def build_head():
    return build_in_mmdet(MODELS, dict(type='FCNMaskHeadFast', num_convs=1, in_channels=8, conv_out_channels=8,
                                       num_classes=3))


def sampling_results(cases):
    return [InstanceData(pos_priors=boxes, pos_assigned_gt_inds=inds) for boxes, inds, _ in cases]


def test_the_fast_mask_head_is_mmdets_with_its_targets():
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    head = build_head()
    assert isinstance(head, FCNMaskHead) and type(head).__name__ == 'FCNMaskHeadFast'
    cases = [random_case(seed) for seed in (4, 5)]
    gts = [InstanceData(masks=masks) for _, _, masks in cases]
    cfg = ConfigDict(mask_size=28)
    got = head.get_targets(sampling_results(cases), gts, cfg)  # first: mmdet's clips the boxes in place
    assert torch.equal(got, FCNMaskHead.get_targets(head, sampling_results(cases), gts, cfg))


def test_polygon_masks_take_mmdets_path():
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    head = build_head()
    boxes, inds, _ = random_case(6, num_gt=2)
    square = [np.array([5.0, 5.0, 30.0, 5.0, 30.0, 25.0, 5.0, 25.0])]
    triangle = [np.array([10.0, 30.0, 45.0, 2.0, 50.0, 35.0])]
    gts = [InstanceData(masks=PolygonMasks([square, triangle], H, W))]
    cfg = ConfigDict(mask_size=28)
    got = head.get_targets(sampling_results([(boxes, inds, None)]), gts, cfg)
    assert torch.equal(got, FCNMaskHead.get_targets(head, sampling_results([(boxes, inds, None)]), gts, cfg))
    assert got.sum() > 0


def test_device_random_choice_is_a_uniform_subset():
    torch.manual_seed(0)
    gallery = torch.arange(100, 150)
    counts = torch.zeros(50)
    for _ in range(2000):
        chosen = device_random_choice(gallery, 10)
        assert chosen.unique().numel() == 10 and bool(((chosen >= 100) & (chosen < 150)).all())
        counts[chosen - 100] += 1
    # each element is drawn with probability 1/5: 400 of 2000 expected, sd ~18; 6 sd either side
    assert counts.min() > 290 and counts.max() < 510, counts
    with pytest.raises(ValueError, match='cannot draw 51 samples from a gallery of 50'):
        device_random_choice(gallery, 51)


def test_the_fast_sampler_draws_what_mmdets_draws_on_the_cpu():
    # on the CPU both permute with the CPU generator: the same subset from the same seed
    from mmdet.models.task_modules.samplers import RandomSampler
    fast = build_in_mmdet(TASK_UTILS, dict(type='RandomSamplerFast', num=8, pos_fraction=0.5),
                          default_args=dict(context=None))
    stock = RandomSampler(num=8, pos_fraction=0.5)
    assert isinstance(fast, RandomSampler)
    gallery = torch.arange(1000) * 3
    torch.manual_seed(3)
    ours = fast.random_choice(gallery, 8)
    torch.manual_seed(3)
    assert torch.equal(ours, stock.random_choice(gallery, 8))
    listed = fast.random_choice(list(range(20)), 5)  # not a tensor: mmdet's path, an array back
    assert isinstance(listed, np.ndarray) and len(set(listed.tolist())) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_targets_still_equal_mmdets_and_the_draws_stay_there():
    cases = [tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in random_case(seed)) for seed in range(3)]
    cfg = ConfigDict(mask_size=28)
    got = torch.cat([mask_targets_single(*c, 28) for c in cases])  # masks over from pinned memory
    expected = mask_target([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases], cfg)
    assert got.is_cuda and torch.equal(got, expected)
    chosen = device_random_choice(torch.arange(250_000, device='cuda'), 256)
    assert chosen.is_cuda and chosen.unique().numel() == 256
