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
from suite_support import build_in_scope  # noqa: E402

RCNN = dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1)


def roi_head(iou: str = 'BboxOverlaps2DFast', **assigner):
    train_cfg = ConfigDict(assigner=dict(type='MaxIoUAssignerFast', iou_calculator=dict(type=iou),
                                         **{**RCNN, **assigner}),
                           sampler=dict(type='RandomSamplerFast', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                                        add_gt_as_proposals=True),
                           mask_size=28, pos_weight=-1, debug=False)
    return build_in_scope(MODELS, dict(
        type='StandardRoIHeadFast', train_cfg=train_cfg,
        bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7,
                                                                         sampling_ratio=0),
                                out_channels=8, featmap_strides=[4, 8]),
        bbox_head=dict(type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16, roi_feat_size=7, num_classes=3)))


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
    assert cfg.roi_head.type == 'StandardRoIHeadFast'
    with DefaultScope.overwrite_default_scope('mmdet'):
        fast = MODELS.build(cfg)
        stock_cfg = copy.deepcopy(cfg)
        stock_cfg.roi_head.type = 'StandardRoIHead'
        stock = MODELS.build(stock_cfg)
    assert type(fast.roi_head).__name__ == 'StandardRoIHeadFast' and type(stock.roi_head).__name__ == 'StandardRoIHead'
    stock.load_state_dict(fast.state_dict())
    data = _det_data(2, 128, num_classes=3, boxes=3)
    losses = []
    for model in (fast, stock):
        batch = model.train().data_preprocessor(copy.deepcopy(data), True)
        torch.manual_seed(7)
        losses.append(model.loss(batch['inputs'], batch['data_samples']))
    ours, mmdets = losses
    assert set(ours) == set(mmdets) and 'loss_mask' in ours
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
