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

from convnextv2_dense.bench.sync_ops import would_sync_sites  # noqa: E402
from convnextv2_dense.mm.fast_targets import (_largest_keys, mask_targets_single, sample_pos_neg,  # noqa: E402
                                              sample_pos_neg_masks)
from mmdet.registry import MODELS, TASK_UTILS  # noqa: E402
from suite_support import build_in_scope  # noqa: E402
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


def build_head():
    return build_in_scope(MODELS, dict(type='FCNMaskHeadFast', num_convs=1, in_channels=8, conv_out_channels=8,
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


def assignment(seed: int, num_pos: int, num_neg: int, num_ignored: int, num_gts: int = 4) -> torch.Tensor:
    """gt_inds of one image in a random order: box numbers 1..num_gts, 0 negative, -1 ignored."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.randint(1, num_gts + 1, (num_pos,), generator=gen), torch.zeros(num_neg, dtype=torch.long),
                        torch.full((num_ignored,), -1)])
    return values[torch.randperm(values.numel(), generator=gen)]


@pytest.mark.parametrize('counts', [(5, 20, 7), (0, 30, 2), (3, 0, 9), (0, 0, 4), (300, 2000, 50)])
@pytest.mark.parametrize('neg_pos_ub', [-1, 2])
def test_the_draw_has_mmdets_sizes_and_only_members(counts, neg_pos_ub):
    gt_inds = assignment(0, *counts)
    num, fraction = 64, 0.25
    pos, neg = sample_pos_neg(gt_inds, num, fraction, neg_pos_ub)
    want_pos = min(counts[0], int(num * fraction))  # mmdet's rules (BaseSampler.sample)
    want_neg = num - want_pos if neg_pos_ub < 0 else min(num - want_pos, int(neg_pos_ub * max(1, want_pos)))
    assert pos.numel() == want_pos and neg.numel() == min(want_neg, counts[1])
    assert pos.dtype == neg.dtype == torch.long
    assert bool((gt_inds[pos] > 0).all()) and bool((gt_inds[neg] == 0).all())
    for inds in (pos, neg):  # distinct and increasing, as mmdet's after unique()
        assert bool((inds[1:] > inds[:-1]).all())


def test_the_draw_is_uniform_over_the_members():
    torch.manual_seed(0)
    gt_inds = assignment(1, 40, 60, 20)
    pos_counts, neg_counts = torch.zeros(120), torch.zeros(120)
    for _ in range(2000):
        pos, neg = sample_pos_neg(gt_inds, 20, 0.5)  # 10 of 40 positives, 10 of 60 negatives
        pos_counts[pos] += 1
        neg_counts[neg] += 1
    # each positive drawn with probability 1/4 (500 of 2000, sd ~19), each negative 1/6 (333, sd ~17)
    for counts, members, expected in ((pos_counts, gt_inds > 0, 500), (neg_counts, gt_inds == 0, 333)):
        assert counts[~members].sum() == 0
        assert (counts[members] - expected).abs().max() < 6 * 19, counts[members]


def build_samplers(**options):
    from mmdet.models.task_modules.samplers import RandomSampler
    fast = build_in_scope(TASK_UTILS, dict(type='RandomSamplerFast', **options), default_args=dict(context=None))
    assert isinstance(fast, RandomSampler) and type(fast).__name__ == 'RandomSamplerFast'
    return fast, RandomSampler(**options)


@pytest.mark.parametrize('add_gt', [False, True])
def test_the_fast_sampler_gives_mmdets_result_when_everything_is_taken(add_gt):
    # fewer members than asked for: both samplers take them all, so the results are equal, field by field
    from mmdet.models.task_modules.assigners import AssignResult
    fast, stock = build_samplers(num=512, pos_fraction=0.25, add_gt_as_proposals=add_gt)
    gt_inds = assignment(2, 30, 200, 40)
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(gt_inds.numel(), 2, generator=gen) * 50
    priors = torch.cat([xy, xy + 4], dim=1)
    truth = InstanceData(bboxes=torch.tensor([[0., 0, 9, 9], [5, 5, 20, 20], [1, 2, 3, 4], [8, 8, 30, 30]]),
                         labels=torch.tensor([3, 1, 0, 2]))
    results = []
    for sampler in (fast, stock):
        assigned = AssignResult(4, gt_inds.clone(), torch.rand(gt_inds.numel(), generator=gen),
                                labels=(gt_inds - 1).clamp(min=0))
        results.append(sampler.sample(assigned, InstanceData(priors=priors), truth))
    got, want = results
    for name in ('pos_inds', 'neg_inds', 'pos_priors', 'neg_priors', 'pos_is_gt', 'pos_assigned_gt_inds',
                 'pos_gt_labels', 'pos_gt_bboxes'):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.num_gts == want.num_gts and got.avg_factor == want.avg_factor
    assert got.pos_is_gt.sum() == (4 if add_gt else 0)


def test_the_fast_sampler_synchronises_once_per_image():
    from mmdet.models.task_modules.assigners import AssignResult
    fast, stock = build_samplers(num=256, pos_fraction=0.5)
    gt_inds = assignment(3, 300, 5000, 100)
    priors = torch.rand(gt_inds.numel(), 4) * 10
    priors[:, 2:] += priors[:, :2]
    truth = InstanceData(bboxes=priors[:4].clone(), labels=torch.arange(4))

    def sample_with(sampler):
        return lambda: sampler.sample(AssignResult(4, gt_inds.clone(), torch.rand(gt_inds.numel()),
                                                   labels=gt_inds.clamp(min=0)), InstanceData(priors=priors), truth)
    ours = would_sync_sites(sample_with(fast))
    assert sum(n for _, n in ours) == 1, ours  # the two counts, read together
    assert sum(n for _, n in would_sync_sites(sample_with(stock))) >= 4  # nonzero and unique, twice each


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_targets_still_equal_mmdets_and_the_draws_stay_there():
    cases = [tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in random_case(seed)) for seed in range(3)]
    cfg = ConfigDict(mask_size=28)
    got = torch.cat([mask_targets_single(*c, 28) for c in cases])  # masks over from pinned memory
    expected = mask_target([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases], cfg)
    assert got.is_cuda and torch.equal(got, expected)
    pos, neg = sample_pos_neg(assignment(0, 300, 250_000, 1000).cuda(), 256, 0.5)
    assert pos.is_cuda and neg.is_cuda and pos.numel() == neg.numel() == 128


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
    stock = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
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
    stock = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
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
    stock = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', **options))
    fast = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssignerFast', **options))
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


@pytest.mark.parametrize('sizes', [(2, 600), (2, 120), (1, 30)])  # the last: small boxes, the top levels empty
def test_the_fast_roi_extractor_gives_mmdets_features_and_gradients(sizes):
    max_size, num_rois = sizes[1], 40
    options = dict(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0), out_channels=4,
                   featmap_strides=[4, 8, 16, 32])
    fast = build_in_scope(MODELS, dict(type='SingleRoIExtractorFast', **options))
    stock = build_in_scope(MODELS, dict(type='SingleRoIExtractor', **options))
    assert isinstance(fast, type(stock)) and type(fast).__name__ == 'SingleRoIExtractorFast'
    gen = torch.Generator().manual_seed(sizes[1])
    xy = torch.rand(num_rois, 2, generator=gen) * 100
    rois = torch.cat([torch.randint(0, sizes[0], (num_rois, 1), generator=gen).float(), xy,
                      xy + 2 + torch.rand(num_rois, 2, generator=gen) * max_size], dim=1)
    levels = stock.map_roi_levels(rois, 4)
    results = []
    for extractor in (fast, stock):
        feats = tuple(torch.randn(sizes[0], 4, 256 // s, 256 // s, generator=torch.Generator().manual_seed(s),
                                  requires_grad=True) for s in (4, 8, 16, 32))
        out = extractor(feats, rois)
        out.backward(torch.ones_like(out))
        results.append((out, [f.grad for f in feats]))
    (got, got_grads), (want, want_grads) = results
    assert torch.equal(got, want) and got.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))
    if sizes[1] == 600:
        assert levels.unique().numel() == 4  # every level has RoIs
    if sizes[1] == 30:
        assert levels.max() < 3  # and here one has none
    assert sum(n for _, n in would_sync_sites(lambda: fast(feats, rois))) == 1


@pytest.mark.parametrize('neg_pos_ub', [-1, 2])
def test_the_batched_draw_is_each_images_draw_with_its_keys(neg_pos_ub):
    counts = [(5, 20, 7), (0, 30, 2), (3, 0, 9), (0, 0, 32), (40, 200, 50)]  # 32 priors pad the short ones
    rows = [assignment(seed, *c) for seed, c in enumerate(counts)]
    width = max(r.numel() for r in rows)
    gt_inds = torch.stack([torch.cat([r, r.new_full((width - r.numel(),), -1)]) for r in rows])
    keys = torch.randperm(gt_inds.numel(), generator=torch.Generator().manual_seed(0)).view_as(gt_inds) / 1e4
    num, fraction = 64, 0.25
    pos, neg, avg = sample_pos_neg_masks(gt_inds, keys, num, fraction, neg_pos_ub)
    for i, (p, n) in enumerate(zip(*sample_pos_neg_masks(gt_inds, keys, num, fraction, neg_pos_ub)[:2])):
        want_pos, want_neg = sample_pos_neg(gt_inds[i], num, fraction, neg_pos_ub)  # the sizes, from other keys
        assert p.sum() == want_pos.numel() and n.sum() == want_neg.numel()
        # the same rule on the same keys as the per-image draw
        assert torch.equal(p.nonzero().squeeze(1), _largest_keys(keys[i], gt_inds[i] > 0, want_pos.numel()))
        assert torch.equal(n.nonzero().squeeze(1), _largest_keys(keys[i], gt_inds[i] == 0, want_neg.numel()))
        assert avg[i] == max(want_pos.numel(), 1) + max(want_neg.numel(), 1)  # mmdet's SamplingResult.avg_factor
    assert not (pos & neg).any() and pos.sum() > 0 and neg.sum() > 0


def test_the_rpns_copy_of_the_batch_shares_the_masks_and_copies_the_rest():
    from convnextv2_dense.bench.full import _det_data
    from convnextv2_dense.mm.fast_det import copy_sharing_masks
    samples = _det_data(2, 64, num_classes=3, boxes=2)['data_samples']
    copied = copy_sharing_masks(samples)
    for old, new in zip(samples, copied):
        assert new.gt_instances.masks is old.gt_instances.masks
        assert new.gt_instances is not old.gt_instances and new.gt_instances.labels is not old.gt_instances.labels
        assert torch.equal(new.gt_instances.bboxes, old.gt_instances.bboxes) and new.metainfo == old.metainfo
    assert copy_sharing_masks([]) == []


def test_mask_rcnn_fast_gives_mmdets_losses_without_touching_the_batch(monkeypatch):
    """Same weights, same batch, same random streams: MaskRCNNFast's losses are MaskRCNN's, bit for bit, and the
    caller's samples keep their labels (the RPN's copy got the zeros); mmdet's deepcopy copies no mask."""
    import copy as copy_module

    from mmengine.config import Config

    import convnextv2_dense  # noqa: F401  (registers the variants)
    from convnextv2_dense.bench.full import _det_data
    cfg = Config.fromfile('configs/demo/mask-rcnn_convnextv2_atto_demo.py').model
    cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('mmdet'):
        fast = MODELS.build(cfg)
        stock = MODELS.build(dict(cfg, type='MaskRCNN'))
    assert type(fast).__name__ == 'MaskRCNNFast' and type(fast).__mro__[1] is type(stock)
    stock.load_state_dict(fast.state_dict())
    data = _det_data(2, 128, num_classes=3, boxes=3)
    labels = [s.gt_instances.labels.clone() for s in data['data_samples']]
    copied_masks = []
    real_deepcopy = copy_module.deepcopy

    def spy(value, memo=None):
        out = real_deepcopy(value, memo)
        if isinstance(value, list) and value and hasattr(value[0], 'gt_instances'):  # a batch's samples
            copied_masks.extend(new.gt_instances.masks is not old.gt_instances.masks for old, new in zip(value, out))
        return out
    losses = []
    for model in (fast, stock):
        batch = model.train().data_preprocessor(copy_module.deepcopy(data), True)
        monkeypatch.setattr(copy_module, 'deepcopy', spy)
        torch.manual_seed(7)
        losses.append(model.loss(batch['inputs'], batch['data_samples']))
        monkeypatch.setattr(copy_module, 'deepcopy', real_deepcopy)
        assert all(torch.equal(s.gt_instances.labels, l) for s, l in zip(batch['data_samples'], labels))
    assert copied_masks == [False, False, True, True]  # ours shares them; mmdet's copies each image's
    (ours, mmdets) = losses
    assert set(ours) == set(mmdets)
    for key in ours:
        for a, b in zip(*(v if isinstance(v, list) else [v] for v in (ours[key], mmdets[key]))):
            assert torch.equal(a, b), key
