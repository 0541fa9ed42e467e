"""DeltaXYWHBBoxCoderFast / AnchorGeneratorFast / BboxOverlaps2DFast give mmdet's numbers bit for bit, without
making tensors from host values in the step (CPU; the GPU test checks the same with no synchronisation)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip('mmdet')

from mmengine.registry import DefaultScope  # noqa: E402

from convnextv2_dense.bench.sync_ops import would_sync_sites  # noqa: E402
from mmdet.registry import TASK_UTILS  # noqa: E402

CODER = dict(target_means=(0.1, -0.2, 0.05, 0.0), target_stds=(0.1, 0.1, 0.2, 0.2))
ANCHORS = dict(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])


def build_pair(stock_type: str, **options):
    with DefaultScope.overwrite_default_scope('mmdet'):
        stock = TASK_UTILS.build(dict(type=stock_type, **options))
        fast = TASK_UTILS.build(dict(type=stock_type + 'Fast', **options))
    assert isinstance(fast, type(stock)) and type(fast).__name__ == stock_type + 'Fast'
    return fast, stock


def boxes(seed: int, n: int, size: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * size
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen) * size / 3], dim=1).to(dtype)


def test_the_coder_encodes_as_mmdets():
    fast, stock = build_pair('DeltaXYWHBBoxCoder', **CODER)
    priors, gts = boxes(0, 500), boxes(1, 500)
    got = fast.encode(priors, gts)
    assert torch.equal(got, stock.encode(priors, gts)) and got.abs().sum() > 0
    # the constants are made once: a second encode makes no tensor from host values
    assert would_sync_sites(lambda: fast.encode(priors, gts)) == []
    assert would_sync_sites(lambda: stock.encode(priors, gts)) != []


@pytest.mark.parametrize('options', [dict(), dict(clip_border=False), dict(add_ctr_clamp=True, ctr_clamp=8)])
@pytest.mark.parametrize('classes', [1, 3])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_the_coder_decodes_as_mmdets(options, classes, dtype):
    fast, stock = build_pair('DeltaXYWHBBoxCoder', **CODER, **options)
    rois = boxes(2, 300)
    deltas = (torch.randn(300, 4 * classes, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    for max_shape in (None, (90, 120)):
        got = fast.decode(rois, deltas, max_shape=max_shape)
        want = stock.decode(rois, deltas, max_shape=max_shape)
        assert got.dtype == want.dtype and torch.equal(got, want), max_shape
    assert fast.decode(rois[:0], deltas[:0]).shape == (0, 4 * classes)


def test_the_coder_keeps_mmdets_other_paths():
    fast, stock = build_pair('DeltaXYWHBBoxCoder', **CODER)
    rois, deltas = boxes(4, 6)[None], torch.randn(1, 6, 4)
    with pytest.warns(UserWarning, match='onnx_delta2bbox is deprecated'):  # batched decoding: mmdet's path
        assert torch.equal(fast.decode(rois, deltas), stock.decode(rois, deltas))
    with pytest.raises(AssertionError):  # mismatched counts: mmdet's own check
        fast.encode(boxes(0, 3), boxes(1, 4))


def test_the_anchor_generator_gives_mmdets_anchors():
    fast, stock = build_pair('AnchorGenerator', **ANCHORS)
    sizes = [(64, 48), (32, 24), (16, 12), (8, 6), (4, 3)]
    got, want = fast.grid_priors(sizes, device='cpu'), stock.grid_priors(sizes, device='cpu')
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    got = fast.grid_priors(sizes, dtype=torch.float16, device='cpu')
    assert all(torch.equal(a, b) for a, b in zip(got, stock.grid_priors(sizes, dtype=torch.float16, device='cpu')))


@pytest.mark.parametrize('mode', ['iou', 'iof'])
@pytest.mark.parametrize('shapes', [((7, 4), (300, 4)), ((2, 5, 4), (2, 9, 4)), ((6, 5), (40, 5))])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_iou_calculator_gives_mmdets_overlaps(mode, shapes, dtype):
    fast, stock = build_pair('BboxOverlaps2D')
    a = boxes(5, torch.Size(shapes[0][:-1]).numel(), 40, dtype)
    b = boxes(6, torch.Size(shapes[1][:-1]).numel(), 40, dtype)
    a = torch.cat([a, torch.rand(len(a), shapes[0][-1] - 4, dtype=dtype)], 1).reshape(shapes[0])
    b = torch.cat([b, torch.rand(len(b), shapes[1][-1] - 4, dtype=dtype)], 1).reshape(shapes[1])
    b[..., 3, :4] = b[..., 2, :4]  # an identical box and a degenerate one: IoU 1 and the eps
    b[..., 4, 2:4] = b[..., 4, 0:2]
    got = fast(a, b, mode)
    want = stock(a, b, mode)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert got.max() > 0
    assert would_sync_sites(lambda: fast(a, b, mode)) == []


def test_the_iou_calculator_keeps_mmdets_other_paths():
    fast, stock = build_pair('BboxOverlaps2D')
    a, b = boxes(7, 5), boxes(8, 5)
    for kwargs in (dict(mode='giou'), dict(is_aligned=True), dict(mode='iou', is_aligned=True)):
        assert torch.equal(fast(a, b, **kwargs), stock(a, b, **kwargs)), kwargs
    assert fast(a[:0], b).shape == (0, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_on_the_gpu_the_box_variants_equal_mmdets_without_a_host_synchronisation():
    coder, stock_coder = build_pair('DeltaXYWHBBoxCoder', **CODER)
    anchors, stock_anchors = build_pair('AnchorGenerator', **ANCHORS)
    iou, stock_iou = build_pair('BboxOverlaps2D')
    priors, gts, deltas = boxes(0, 500).cuda(), boxes(1, 500).cuda(), torch.randn(500, 4, device='cuda')
    sizes = [(64, 48), (32, 24), (16, 12), (8, 6), (4, 3)]  # one per stride

    def ours():
        return (coder.encode(priors, gts), coder.decode(priors, deltas, max_shape=(90, 120)),
                anchors.grid_priors(sizes, device='cuda'), iou(gts[:20], priors))
    ours()  # the first call per device makes the constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')  # any synchronising call raises
    try:
        got = ours()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    want = (stock_coder.encode(priors, gts), stock_coder.decode(priors, deltas, max_shape=(90, 120)),
            stock_anchors.grid_priors(sizes, device='cuda'), stock_iou(gts[:20], priors))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[3], want[3])
    assert all(torch.equal(a, b) for a, b in zip(got[2], want[2]))


def test_the_anchor_generator_keeps_its_grids_and_flags_and_gives_mmdets():
    fast, stock = build_pair('AnchorGenerator', **ANCHORS)
    sizes = [(64, 48), (32, 24), (16, 12), (8, 6), (4, 3)]
    first, again = fast.grid_priors(sizes, device='cpu'), fast.grid_priors(sizes, device='cpu')
    assert first is not again and all(a is b for a, b in zip(first, again))  # a new list of the kept tensors
    for pad_shape in ((256, 192), (250, 190, 3), (256, 192)):
        got = fast.valid_flags(sizes, pad_shape, device='cpu')
        want = stock.valid_flags(sizes, pad_shape, device='cpu')
        assert all(torch.equal(a, b) for a, b in zip(got, want)), pad_shape
    assert not torch.cat(fast.valid_flags(sizes, (250, 190), device='cpu')).all()  # the pad shape matters
    other = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    assert all(torch.equal(a, b) for a, b in zip(fast.grid_priors(other, device='cpu'),
                                                  stock.grid_priors(other, device='cpu')))
    for n in range(20):  # no more than a few kept
        fast.grid_priors([(n + 1, n + 1)] * 5, device='cpu')
    assert len(fast._kept._kept) == fast._kept.size
