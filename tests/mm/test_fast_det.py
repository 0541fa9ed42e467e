"""MaxIoUAssignerFast / RandomSamplerFast / FCNMaskHeadFast give mmdet's results: the same assignments, the same
mask targets, the same sampling (CPU)."""
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


def iou_case(seed: int, num_gts: int, num_priors: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """IoUs, most of them low as for real anchors, optionally on a coarse grid (ties within a box's IoUs and
    between boxes), and labels."""
    gen = torch.Generator().manual_seed(seed)
    overlaps = torch.rand(num_gts, num_priors, generator=gen) ** 3
    if ties:
        overlaps = (overlaps * 8).floor() / 8
    return overlaps, torch.randint(0, 80, (num_gts,), generator=gen)


ASSIGNERS = [
    dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),  # RPN
    dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1),  # RoI
    dict(pos_iou_thr=0.6, neg_iou_thr=(0.1, 0.4), min_pos_iou=0.2, match_low_quality=True,
         gt_max_assign_all=False),
    dict(pos_iou_thr=0.95, neg_iou_thr=0.05, min_pos_iou=0.0, match_low_quality=True),  # every box claims
]


@pytest.mark.parametrize('options', ASSIGNERS)
@pytest.mark.parametrize('shape', [(1, 50), (7, 300), (40, 120), (0, 30), (5, 0)])
@pytest.mark.parametrize('ties', [False, True])
def test_max_iou_assigner_fast_equals_mmdets(options, shape, ties):
    stock = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
    assert isinstance(fast, type(stock)) and type(fast).__name__ == 'MaxIoUAssignerFast'
    for seed in range(3):
        overlaps, labels = iou_case(seed, *shape, ties)
        want = stock.assign_wrt_overlaps(overlaps.clone(), labels)
        got = fast.assign_wrt_overlaps(overlaps.clone(), labels)
        assert got.num_gts == want.num_gts
        for name in ('gt_inds', 'max_overlaps', 'labels'):
            assert getattr(got, name).dtype == getattr(want, name).dtype, name
            assert torch.equal(getattr(got, name), getattr(want, name)), (name, seed)
        if shape == (40, 120) and ties and options['match_low_quality']:
            # the case that matters: priors claimed by several boxes, which the last box wins
            claimed = (overlaps == overlaps.max(dim=1, keepdim=True).values).sum(dim=0)
            assert (claimed > 1).any()
        if shape == (7, 300) and options is ASSIGNERS[0]:  # the RPN's: positives, negatives and ignored occur
            assert (got.gt_inds > 0).any() and (got.gt_inds == 0).any() and (got.gt_inds == -1).any()


def test_max_iou_assigner_fast_takes_mmdets_assign_path_with_boxes():
    """The whole ``assign`` (IoU of boxes, then the assignment), as the RPN calls it."""
    options = ASSIGNERS[0]
    stock = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    priors = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    gt = priors[torch.randperm(200, generator=gen)[:6]] + torch.randn(6, 4, generator=gen)
    pred = InstanceData(priors=priors)
    truth = InstanceData(bboxes=gt, labels=torch.arange(6))
    want, got = stock.assign(pred, truth), fast.assign(pred, truth)
    assert torch.equal(got.gt_inds, want.gt_inds) and torch.equal(got.labels, want.labels)
    assert (got.gt_inds > 0).sum() >= 6  # every box got at least its best prior


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_assigner_equals_mmdets_without_a_host_synchronisation():
    options = ASSIGNERS[0]
    stock = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_mmdet(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
    overlaps, labels = (t.cuda() for t in iou_case(0, 20, 5000, ties=True))
    want = stock.assign_wrt_overlaps(overlaps, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')  # any synchronising call raises
    try:
        got = fast.assign_wrt_overlaps(overlaps, labels)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for name in ('gt_inds', 'max_overlaps', 'labels'):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
