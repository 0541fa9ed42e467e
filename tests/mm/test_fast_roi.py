"""StandardRoIHeadFast assigns the batch's proposals in one pass with mmdet's results (CPU; the GPU test where
one is present)."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import convnextv2_dense  # noqa: E402,F401  (registers the variants)
from mmdet.registry import MODELS, TASK_UTILS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from suite_support import build_in_scope  # noqa: E402

RCNN = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1)


def roi_head(iou: str = 'BboxOverlaps2DFast', sampler: str = 'RandomSamplerFast', num: int = 64,
             add_gt: bool = True, **assigner):
    train_cfg = ConfigDict(assigner=dict(type='MaxIoUAssignerFast', iou_calculator=dict(type=iou),
                                         **{**RCNN, **assigner}),
                           sampler=dict(type=sampler, num=num, pos_fraction=0.25, neg_pos_ub=-1,
                                        add_gt_as_proposals=add_gt),
                           mask_size=28, pos_weight=-1, debug=False)
    return build_in_scope(MODELS, dict(
        type='StandardRoIHeadFast', train_cfg=train_cfg,
        bbox_roi_extractor=dict(type='SingleRoIExtractorFast', roi_layer=dict(type='RoIAlign', output_size=7,
                                                                             sampling_ratio=0),
                                out_channels=8, featmap_strides=[4, 8]),
        bbox_head=dict(type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16, roi_feat_size=7, num_classes=3,
                       bbox_coder=dict(type='DeltaXYWHBBoxCoderFast', target_stds=[0.1, 0.1, 0.2, 0.2]))))


def proposals_and_boxes(counts, seed=0, device='cpu'):
    """Per image: ``n`` proposals (InstanceData with bboxes) and ``k`` boxes; some proposals near the boxes."""
    gen = torch.Generator().manual_seed(seed)
    rpn, truth = [], []
    for n, k in counts:
        xy = torch.rand(k, 2, generator=gen) * 50
        boxes = torch.cat([xy, xy + 5 + torch.rand(k, 2, generator=gen) * 20], dim=1)
        near = boxes[torch.randint(0, max(k, 1), (n // 2,), generator=gen)] if k else torch.zeros(0, 4)
        near = near + torch.randn(near.shape, generator=gen)
        xy = torch.rand(n - len(near), 2, generator=gen) * 60
        far = torch.cat([xy, xy + 2 + torch.rand(len(xy), 2, generator=gen) * 30], dim=1)
        rpn.append(InstanceData(priors=torch.cat([near, far]).to(device)))
        truth.append(InstanceData(bboxes=boxes.to(device), labels=torch.randint(0, 3, (k,), generator=gen).to(device)))
    return rpn, truth


@pytest.mark.parametrize('counts', [[(30, 3), (50, 1), (12, 6)], [(30, 3), (50, 0), (12, 6)], [(30, 3), (0, 2)]])
@pytest.mark.parametrize('gt_max_assign_all', [True, False])
@pytest.mark.parametrize('iou', ['BboxOverlaps2DFast', 'BboxOverlaps2D'])  # either takes the padded batch
def test_the_one_pass_assigns_as_mmdets_assigner(counts, gt_max_assign_all, iou):
    head = roi_head(iou, gt_max_assign_all=gt_max_assign_all)
    stock = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', gt_max_assign_all=gt_max_assign_all, **RCNN))
    rpn, truth = proposals_and_boxes(counts)
    one_pass = all(n > 0 and k > 0 for n, k in counts)
    assert head._assign_in_one_pass(rpn, truth, [None] * len(truth)) == one_pass
    got = head._assign(rpn, truth, [None] * len(truth))
    for result, results, gt in zip(got, rpn, truth):
        want = stock.assign(results, gt)
        assert result.num_gts == want.num_gts
        for name in ('gt_inds', 'max_overlaps', 'labels'):
            a, b = getattr(result, name), getattr(want, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
    if one_pass:
        assert any((r.gt_inds > 0).any() for r in got) and any((r.gt_inds == 0).any() for r in got)


def test_the_one_pass_takes_fewer_operations_than_the_loop():
    head = roi_head()
    rpn, truth = proposals_and_boxes([(40, 3), (40, 5), (40, 2), (40, 4)])
    counts = []
    for one_pass in (True, False):
        head._assign_in_one_pass = (lambda *args: True) if one_pass else (lambda *args: False)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            head._assign(rpn, truth, [None] * 4)
        counts.append(sum(e.count for e in prof.key_averages() if e.key == 'aten::max'))
    # one max in the IoUs (the corners), two in the assignment: once for the batch, or once per image
    assert counts == [3, 3 * 4]


def test_mask_rcnn_with_the_fast_roi_head_gives_mmdets_losses():
    """The demo Mask R-CNN, same weights, batch and random streams: StandardRoIHeadFast's losses are
    StandardRoIHead's, bit for bit."""
    from mmengine.config import Config

    from convnextv2_dense.bench.full import _det_data
    cfg = Config.fromfile('configs/demo/mask-rcnn_convnextv2_atto_demo.py').model
    cfg.backbone.init_cfg = None
    cfg.train_cfg.rcnn.sampler.num = 100_000  # every proposal drawn: the one-pass draw's and mmdet's are equal
    assert cfg.roi_head.type == 'StandardRoIHeadFast'
    with DefaultScope.overwrite_default_scope('mmdet'):
        fast = MODELS.build(cfg)
        stock_cfg = copy.deepcopy(cfg)
        stock_cfg.roi_head.type = 'StandardRoIHead'
        stock = MODELS.build(stock_cfg)
    assert type(fast.roi_head).__name__ == 'StandardRoIHeadFast' and type(stock.roi_head).__name__ == 'StandardRoIHead'
    stock.load_state_dict(fast.state_dict())
    data = _det_data(2, 128, num_classes=3, boxes=3)
    taken, batch_losses = [], fast.roi_head._batch_losses
    fast.roi_head._batch_losses = lambda *args: taken.append(True) or batch_losses(*args)
    losses = []
    for model in (fast, stock):
        batch = model.train().data_preprocessor(copy.deepcopy(data), True)
        torch.manual_seed(7)
        losses.append(model.loss(batch['inputs'], batch['data_samples']))
    ours, mmdets = losses
    assert taken == [True] and set(ours) == set(mmdets) and 'loss_mask' in ours
    for key in ours:
        for a, b in zip(*(v if isinstance(v, list) else [v] for v in (ours[key], mmdets[key]))):
            assert torch.equal(a, b), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_one_pass_assigns_as_mmdets_assigner():
    head = roi_head()
    stock = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', **RCNN))
    rpn, truth = proposals_and_boxes([(1000, 20), (1000, 7), (990, 31), (1000, 1)], device='cuda')
    for result, results, gt in zip(head._assign(rpn, truth, [None] * 4), rpn, truth):
        want = stock.assign(results, gt)
        for name in ('gt_inds', 'max_overlaps', 'labels'):
            assert torch.equal(getattr(result, name), getattr(want, name)), name


def mmdets_sampling(head, rpn, truth):
    """Each image's SamplingResult by mmdet's MaxIoUAssigner and RandomSampler with the head's settings."""
    options = head.train_cfg.sampler
    sampler = build_in_scope(TASK_UTILS, dict(options, type='RandomSampler'))
    assigner = build_in_scope(TASK_UTILS, dict(type='MaxIoUAssigner', **RCNN))
    return [sampler.sample(assigner.assign(results, gt), results, gt) for results, gt in zip(rpn, truth)]


FIELDS = ('pos_inds', 'neg_inds', 'pos_priors', 'neg_priors', 'pos_is_gt', 'pos_assigned_gt_inds', 'pos_gt_labels',
          'pos_gt_bboxes')


@pytest.mark.parametrize('add_gt', [True, False])
@pytest.mark.parametrize('counts', [[(30, 3), (50, 1), (12, 6)], [(40, 2)]])
def test_the_batch_draw_is_mmdets_sampling_when_everything_is_taken(add_gt, counts, device='cpu'):
    """Every candidate drawn (so no randomness): each image's SamplingResult, RoIs and box targets are mmdet's."""
    from mmdet.models.task_modules.samplers import SamplingResult
    from mmdet.structures.bbox import bbox2roi
    head = roi_head(num=100_000, add_gt=add_gt)  # more than there are: every candidate is drawn, as by mmdet
    rpn, truth = proposals_and_boxes(counts, device=device)
    assert head._sample_in_one_pass(rpn, truth, [None] * len(truth))
    batch = head._sample_batch(rpn, truth)
    want = mmdets_sampling(head, rpn, truth)
    for got, expected in zip(batch.sampling_results(SamplingResult, [gt.bboxes for gt in truth]), want):
        for name in FIELDS:
            a, b = getattr(got, name), getattr(expected, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert (got.num_gts, got.num_pos, got.num_neg, got.avg_factor) == \
            (expected.num_gts, expected.num_pos, expected.num_neg, expected.avg_factor)
    assert torch.equal(batch.rois(), bbox2roi([res.priors for res in want]))
    assert torch.equal(batch.pos_rois(), bbox2roi([res.pos_priors for res in want]))
    box = head.bbox_head
    labels, label_weights, targets, weights = box.get_targets(want, head.train_cfg)
    got_labels, got_weights, got_targets = batch.box_targets(box.num_classes, 1.0, box.bbox_coder.encode)
    assert torch.equal(got_labels, labels) and torch.equal(got_weights, label_weights)
    pos = (labels < box.num_classes).nonzero().squeeze(1)
    assert torch.equal(batch.pos_index(), pos) and torch.equal(got_targets, targets[pos])
    assert bool((weights[pos] == 1).all()) and not weights[labels == box.num_classes].any()
    assert 0 < len(pos) < len(labels)


@pytest.mark.parametrize('num', [8, 64])
def test_the_batch_draw_takes_mmdets_numbers_of_each_kind(num):
    torch.manual_seed(0)
    head = roi_head(num=num)
    rpn, truth = proposals_and_boxes([(300, 8), (200, 3), (100, 20)])
    batch = head._sample_batch(rpn, truth)
    from mmdet.models.task_modules.samplers import SamplingResult
    from mmdet.structures.bbox import bbox_overlaps
    for got, want, gt in zip(batch.sampling_results(SamplingResult, [gt.bboxes for gt in truth]),
                             mmdets_sampling(head, rpn, truth), truth):
        assert (len(got.pos_inds), len(got.neg_inds)) == (len(want.pos_inds), len(want.neg_inds))
        for inds in (got.pos_inds, got.neg_inds):  # distinct and increasing, as mmdet's
            assert bool((inds[1:] > inds[:-1]).all())
        # positives overlap their box by the threshold (or are it), negatives overlap no box that much
        iou = bbox_overlaps(got.pos_priors, gt.bboxes[got.pos_assigned_gt_inds], is_aligned=True)
        assert bool((iou >= RCNN['pos_iou_thr']).all())
        assert torch.equal(got.pos_gt_labels, gt.labels[got.pos_assigned_gt_inds])
        assert bool((bbox_overlaps(got.neg_priors, gt.bboxes).max(1).values < RCNN['neg_iou_thr']).all())
    assert sum(batch.num_pos) > 0 and sum(batch.num_neg) == 3 * num - sum(batch.num_pos)


def test_the_batch_path_is_taken_only_where_it_holds():
    rpn, truth = proposals_and_boxes([(30, 3), (20, 2)])
    assert roi_head()._sample_in_one_pass(rpn, truth, [None] * 2)
    assert not roi_head(sampler='RandomSampler')._sample_in_one_pass(rpn, truth, [None] * 2)  # mmdet's CPU draw
    rpn, truth = proposals_and_boxes([(30, 3), (20, 0)])
    assert not roi_head()._sample_in_one_pass(rpn, truth, [None] * 2)


def test_the_batch_losses_take_fewer_operations_and_one_synchronisation_for_the_draw():
    from convnextv2_dense.bench.sync_ops import would_sync_sites
    head = roi_head(num=32)
    rpn, truth = proposals_and_boxes([(40, 3), (40, 5), (40, 2), (40, 4)])
    feats = tuple(torch.rand(4, 8, s, s) for s in (32, 16))
    samples = [DetDataSample(gt_instances=gt) for gt in truth]
    counts, syncs = [], []
    for one_pass in (True, False):
        head._sample_in_one_pass = (lambda *args: True) if one_pass else (lambda *args: False)
        run = lambda: head.loss(feats, [InstanceData(bboxes=r.priors.clone()) for r in rpn], samples)  # noqa: E731
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            losses = run()
        assert set(losses) == {'loss_cls', 'acc', 'loss_bbox'}
        counts.append(sum(e.count for e in prof.key_averages() if e.key == 'aten::cat'))
        syncs.append(sum(n for _, n in would_sync_sites(run)))
    # one draw for the batch (its counts read once) and the RoI extractor's level counts; mmdet's draws per image
    assert syncs[0] == 2 and syncs[1] > 2 + 4, syncs
    assert counts[0] < counts[1] / 2, counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_batch_draw_is_mmdets_sampling_when_everything_is_taken():
    test_the_batch_draw_is_mmdets_sampling_when_everything_is_taken(True, [(900, 20), (1000, 3), (700, 31)], 'cuda')
