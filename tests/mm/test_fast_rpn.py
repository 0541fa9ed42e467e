"""RPNHeadFast gives mmdet RPNHead's targets: per image (mmdet's loop, its anchors inside found once) and for
the whole batch in one pass (CPU; the GPU test where one is present)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')

from mmengine.config import ConfigDict  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from convnextv2_dense.bench.sync_ops import would_sync_sites  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from suite_support import build_in_scope  # noqa: E402


@pytest.mark.parametrize('allowed_border', [-1, 0])
def test_the_fast_rpn_head_gives_mmdets_targets(allowed_border):
    train_cfg = ConfigDict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                         match_low_quality=True, ignore_iof_thr=-1),
                           sampler=dict(type='PseudoSampler'),  # takes every anchor: the two heads compare
                           allowed_border=allowed_border, pos_weight=-1, debug=False)
    options = dict(in_channels=4, feat_channels=4, train_cfg=train_cfg,
                   anchor_generator=dict(type='AnchorGenerator', scales=[2], ratios=[0.5, 1.0, 2.0],
                                         strides=[4, 8]))
    fast = build_in_scope(MODELS, dict(type='RPNHeadFast', **options))
    stock = build_in_scope(MODELS, dict(type='RPNHead', **options))
    assert isinstance(fast, type(stock)) and type(fast).__name__ == 'RPNHeadFast'
    anchors = torch.cat(stock.prior_generator.grid_priors([(16, 16), (8, 8)], device='cpu'))
    valid = torch.cat(stock.prior_generator.valid_flags([(16, 16), (8, 8)], (56, 64), device='cpu'))
    assert not valid.all()  # anchors over the padding: the subset matters
    truth = InstanceData(bboxes=torch.tensor([[3., 4, 20, 30], [30, 10, 60, 40], [0, 40, 12, 55]]),
                         labels=torch.zeros(3, dtype=torch.long))
    meta = dict(img_shape=(50, 60))
    got = fast._get_targets_single(anchors, valid, truth, meta)
    want = stock._get_targets_single(anchors, valid, truth, meta)
    for name, a, b in zip(('labels', 'label_weights', 'bbox_targets', 'bbox_weights', 'pos_inds', 'neg_inds'),
                          got, want):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (got[0] == 0).any() and got[1].sum() > 0 and got[3].sum() > 0  # positives and weights occur
    with pytest.raises(ValueError, match='There is no valid anchor inside the image boundary'):
        fast._get_targets_single(anchors, torch.zeros_like(valid), truth, meta)


def rpn_heads(allowed_border: int, num: int = 100_000, **head):
    """RPNHeadFast and mmdet's RPNHead with the Mask R-CNN assigner; the samplers draw ``num`` anchors (by
    default more than there are: every one is taken, so the two heads' targets compare)."""
    train_cfg = ConfigDict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                         match_low_quality=True, ignore_iof_thr=-1),
                           sampler=dict(num=num, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
                           allowed_border=allowed_border, pos_weight=-1, debug=False)
    options = dict(in_channels=4, feat_channels=4,
                   anchor_generator=dict(type='AnchorGenerator', scales=[2], ratios=[0.5, 1.0, 2.0], strides=[4, 8]),
                   **head)
    fast_cfg = train_cfg.copy()  # the shipped configs' variants (the same numbers, without host copies)
    fast_cfg.sampler = dict(train_cfg.sampler, type='RandomSamplerFast')
    fast_cfg.assigner = dict(train_cfg.assigner, type='MaxIoUAssignerFast',
                             iou_calculator=dict(type='BboxOverlaps2DFast'))
    stock_cfg = train_cfg.copy()
    stock_cfg.sampler = dict(train_cfg.sampler, type='RandomSampler')
    return (build_in_scope(MODELS, dict(type='RPNHeadFast', train_cfg=fast_cfg,
                                        bbox_coder=dict(type='DeltaXYWHBBoxCoderFast'), **options)),
            build_in_scope(MODELS, dict(type='RPNHead', train_cfg=stock_cfg, **options)))


def rpn_batch(device='cpu', boxes_per_image=(3, 1, 2)):
    """Three images of different sizes in one padded 64x64 batch (anchors over the padding), their boxes."""
    gen = torch.Generator().manual_seed(4)
    metas = [dict(img_shape=(50, 60), pad_shape=(64, 64)), dict(img_shape=(64, 40), pad_shape=(64, 64)),
             dict(img_shape=(64, 64), pad_shape=(64, 64))]
    truths = []
    for n in boxes_per_image:
        xy = torch.rand(n, 2, generator=gen) * 40
        boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * 30], dim=1)
        truths.append(InstanceData(bboxes=boxes.to(device), labels=torch.zeros(n, dtype=torch.long, device=device)))
    return truths, metas


@pytest.mark.parametrize('allowed_border', [-1, 0])
@pytest.mark.parametrize('boxes_per_image', [(3, 1, 2), (3, 0, 2)])  # an image without boxes: mmdet's loop
def test_the_fast_rpn_head_gives_mmdets_targets_for_the_batch_in_one_pass(allowed_border, boxes_per_image):
    fast, stock = rpn_heads(allowed_border)
    truths, metas = rpn_batch(boxes_per_image=boxes_per_image)
    anchors, valid = stock.get_anchors([(16, 16), (8, 8)], metas, device='cpu')
    got = fast.get_targets(anchors, valid, truths, metas)
    want = stock.get_targets(anchors, valid, truths, metas)
    for name, a, b in zip(('labels', 'label_weights', 'bbox_targets', 'bbox_weights'), got[:4], want[:4]):
        assert len(a) == len(b) == 2, name  # per level
        for level_a, level_b in zip(a, b):
            assert level_a.dtype == level_b.dtype and torch.equal(level_a, level_b), name
    assert got[4] == want[4] and isinstance(got[4], int)  # avg_factor
    labels, weights = (torch.cat(levels, dim=1) for levels in got[:2])
    assert (labels == 0).any() and (weights == 0).any()  # positives; anchors left out (over the padding)
    one_pass = 0 not in boxes_per_image
    syncs = sum(n for _, n in would_sync_sites(lambda: fast.get_targets(anchors, valid, truths, metas)))
    assert syncs == 1 if one_pass else syncs > 3, syncs  # one pass reads avg_factor; the loop syncs per image


def test_the_one_pass_draws_mmdets_numbers_of_anchors():
    fast, stock = rpn_heads(-1, num=64)
    truths, metas = rpn_batch()
    anchors, valid = stock.get_anchors([(16, 16), (8, 8)], metas, device='cpu')
    torch.manual_seed(0)
    got = fast.get_targets(anchors, valid, truths, metas)
    want = stock.get_targets(anchors, valid, truths, metas)
    weights = [torch.cat(levels, dim=1) for levels in (got[1], want[1])]
    positives = [(torch.cat(levels, dim=1) == 0) for levels in (got[0], want[0])]
    assert torch.equal(weights[0].sum(1), weights[1].sum(1)) and got[4] == want[4]  # 64 a image, or all there are
    assert torch.equal(positives[0].sum(1), positives[1].sum(1))
    assert torch.equal(torch.cat(got[3], dim=1)[..., 0].bool(), positives[0])  # box weights at the positives


def test_the_one_pass_raises_mmdets_error_when_an_image_has_no_anchor_inside():
    fast, stock = rpn_heads(0)
    truths, metas = rpn_batch()
    anchors, valid = stock.get_anchors([(16, 16), (8, 8)], metas, device='cpu')
    valid[1] = [torch.zeros_like(flags) for flags in valid[1]]
    with pytest.raises(ValueError, match='There is no valid anchor inside the image boundary'):
        fast.get_targets(anchors, valid, truths, metas)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_one_pass_gives_the_cpus_targets():
    fast, stock = rpn_heads(0)
    got = []
    for device in ('cpu', 'cuda'):
        truths, metas = rpn_batch(device)
        anchors, valid = fast.get_anchors([(16, 16), (8, 8)], metas, device=device)
        got.append(fast.get_targets(anchors, valid, truths, metas))
    cpu, cuda = (torch.cat([torch.cat(levels, dim=1).flatten().double() for levels in g[:4]]) for g in got)
    assert torch.allclose(cpu, cuda.cpu(), rtol=1e-6, atol=1e-6) and got[0][4] == got[1][4]


def proposal_heads(**coder):
    """RPNHeadFast and mmdet's RPNHead, five anchor levels, the Mask R-CNN proposal settings with a small nms_pre
    (so the top-k per level matters)."""
    cfg = ConfigDict(nms_pre=50, max_per_img=40, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0)
    options = dict(in_channels=4, feat_channels=4, test_cfg=cfg,
                   anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                                         strides=[4, 8, 16, 32, 64]))
    fast_coder = dict(type='DeltaXYWHBBoxCoderFast', **coder)
    return (build_in_scope(MODELS, dict(type='RPNHeadFast', bbox_coder=fast_coder, **options)),
            build_in_scope(MODELS, dict(type='RPNHead', bbox_coder=dict(type='DeltaXYWHBBoxCoder', **coder), **options)))


def rpn_outputs(num_imgs: int, size: int = 64, device: str = 'cpu', dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [size // s for s in (4, 8, 16, 32, 64)]
    scores = [torch.randn(num_imgs, 3, n, n, generator=gen).to(device, dtype) for n in sizes]
    deltas = [(torch.randn(num_imgs, 12, n, n, generator=gen) * 0.5).to(device, dtype) for n in sizes]
    metas = [dict(img_shape=(size - 8 * i, size - 4 * i), pad_shape=(size, size), scale_factor=(1.0, 1.0))
             for i in range(num_imgs)]
    return scores, deltas, metas


@pytest.mark.parametrize('clip_border', [True, False])
def test_the_fast_rpn_head_gives_mmdets_proposals_for_the_batch_in_one_pass(clip_border):
    fast, stock = proposal_heads(clip_border=clip_border)
    scores, deltas, metas = rpn_outputs(3)
    got = fast.predict_by_feat(scores, deltas, batch_img_metas=metas)
    want = stock.predict_by_feat(scores, deltas, batch_img_metas=metas)
    assert len(got) == len(want) == 3
    for a, b in zip(got, want):
        assert set(a.keys()) == set(b.keys()) == {'bboxes', 'scores', 'labels'}
        for key in a.keys():
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        assert 0 < len(a) <= 40
    # the one pass sorts each level's scores once for the batch
    counts = []
    for head in (fast, stock):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            head.predict_by_feat(scores, deltas, batch_img_metas=metas)
        counts.append(sum(e.count for e in prof.key_averages() if e.key == 'aten::sort'))
    # two levels have more than nms_pre anchors (768 and 192): sorted once, or once per image; then each image's NMS
    assert counts == [2 + 3, 2 * 3 + 3]


def assert_tied_scores_give_mmdets_proposals(device: str) -> None:
    # scores rounded to half precision tie often: both sorts must order the ties alike (fp32 values: mmcv's NMS
    # takes fp32)
    fast, stock = (head.to(device) for head in proposal_heads())
    scores, deltas, metas = rpn_outputs(4, size=256, device=device, dtype=torch.float16)
    scores, deltas = [s.float() for s in scores], [d.float() for d in deltas]
    assert scores[0].unique().numel() < scores[0].numel() // 2
    for a, b in zip(fast.predict_by_feat(scores, deltas, batch_img_metas=metas),
                    stock.predict_by_feat(scores, deltas, batch_img_metas=metas)):
        for key in a.keys():
            assert torch.equal(a[key], b[key]), key


def test_the_one_pass_orders_tied_scores_as_mmdets_loop():
    assert_tied_scores_give_mmdets_proposals('cpu')


def test_proposals_with_score_factors_take_mmdets_loop():
    fast, stock = proposal_heads()
    scores, deltas, metas = rpn_outputs(2)
    assert not fast._proposals_in_one_pass([s[:, :1] for s in scores], metas, True)
    assert fast._proposals_in_one_pass(None, metas, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_one_pass_gives_mmdets_proposals_with_tied_scores():
    assert_tied_scores_give_mmdets_proposals('cuda')


@pytest.mark.parametrize('box_loss', ['L1Loss', 'SmoothL1Loss'])
def test_the_one_pass_loss_gives_mmdets_gradients_bit_for_bit(box_loss):
    fast, stock = rpn_heads(0, loss_bbox=dict(type=box_loss, loss_weight=1.0))  # every anchor drawn
    truths, metas = rpn_batch()
    gen = torch.Generator().manual_seed(5)
    scores = [torch.randn(3, 3, n, n, generator=gen).requires_grad_() for n in (16, 8)]
    deltas = [(torch.randn(3, 12, n, n, generator=gen) * 0.3).requires_grad_() for n in (16, 8)]
    results = []
    for head in (fast, stock):
        losses = head.loss_by_feat(scores, deltas, truths, metas)
        total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
        results.append((losses, torch.autograd.grad(total, scores + deltas)))
    (ours, our_grads), (mmdets, mmdet_grads) = results
    assert set(ours) == set(mmdets) == {'loss_rpn_cls', 'loss_rpn_bbox'}
    assert isinstance(mmdets['loss_rpn_cls'], list) and len(mmdets['loss_rpn_cls']) == 2  # one per level
    for key in ours:  # one sum over the levels: the same up to the order of the sum
        torch.testing.assert_close(ours[key], sum(mmdets[key]), rtol=1e-6, atol=0)
    for a, b in zip(our_grads, mmdet_grads):
        assert torch.equal(a, b)
    assert all(g.abs().sum() > 0 for g in our_grads[:2]) and any(g.abs().sum() > 0 for g in our_grads[2:])
    syncs = sum(n for _, n in would_sync_sites(lambda: fast.loss_by_feat(scores, deltas, truths, metas)))
    # avg_factor; the sigmoid loss's one-hot labels and the box loss's any(weight > 0), once each (mmdet: per level)
    assert syncs == 3
