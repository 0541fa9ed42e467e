"""UPerHeadFast / FCNHeadFast and their operations give the stock mmseg numbers (CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convnextv2_dense.mm.fast_ops import argmax_accuracy, upsample_bilinear


@pytest.mark.parametrize('ignore_index', [None, 255])
def test_argmax_accuracy_equals_mmsegs_accuracy(ignore_index):
    accuracy = pytest.importorskip('mmseg.models.losses').accuracy
    torch.manual_seed(0)
    pred = torch.randn(2, 150, 17, 19)
    target = torch.randint(0, 150, (2, 17, 19))
    target[0, :5] = 255
    target[1, 3, :4] = pred[1, :, 3, :4].argmax(0)  # some certainly right
    expected = accuracy(pred, target, ignore_index=ignore_index)
    got = argmax_accuracy(pred, target, ignore_index)
    assert got.shape == expected.shape == (1,)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_argmax_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r'pred must be \(N, C, ...\) and target \(N, ...\), got \(2, 3, 4\)'):
        argmax_accuracy(torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long))


@pytest.mark.parametrize('size_in, size_out', [((8, 8), (32, 32)), ((4, 6), (64, 96)), ((7, 5), (16, 12)),
                                               ((16, 16), (32, 32))])
@pytest.mark.parametrize('align_corners', [False, True])
def test_upsample_gradient_equals_torchs(size_in, size_out, align_corners):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size_in, requires_grad=True)
    grad = torch.randn(2, 3, *size_out)
    ours = upsample_bilinear(x, size_out, align_corners)
    stock = F.interpolate(x, size=size_out, mode='bilinear', align_corners=align_corners)
    assert torch.equal(ours, stock)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_stock,) = torch.autograd.grad(stock, x, grad)
    torch.testing.assert_close(g_ours, g_stock, rtol=1e-5, atol=1e-5)


def test_upsample_without_grad_or_downsampling_is_plain_interpolate():
    x = torch.randn(1, 2, 8, 8)
    assert upsample_bilinear(x, (16, 16)).grad_fn is None
    y = torch.randn(1, 2, 8, 8, requires_grad=True)
    assert 'Upsample' in type(upsample_bilinear(y, (4, 4)).grad_fn).__name__  # torch's own backward


def _heads(registry, fast: str, stock: str, **cfg):
    from mmengine.registry import DefaultScope
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):  # whatever scope an earlier test left current
        head_fast = registry.build(dict(type=fast, **cfg))
        head_stock = registry.build(dict(type=stock, **cfg))
    with torch.no_grad():
        for param in head_fast.parameters():
            param.normal_(0, 0.1)
    head_stock.load_state_dict(head_fast.state_dict())
    return head_fast.train(), head_stock.train()


@pytest.mark.parametrize('fast, stock, cfg', [
    ('UPerHeadFast', 'UPerHead', dict(in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3], channels=16,
                                      num_classes=5, norm_cfg=dict(type='BN', requires_grad=True),
                                      dropout_ratio=0.0)),
    ('FCNHeadFast', 'FCNHead', dict(in_channels=32, in_index=2, channels=8, num_classes=5,
                                    norm_cfg=dict(type='BN', requires_grad=True), dropout_ratio=0.0))])
@pytest.mark.parametrize('autocast', [False, True])
def test_fast_heads_give_the_stock_losses_and_gradients(fast, stock, cfg, autocast):
    pytest.importorskip('mmseg')
    import convnextv2_dense  # noqa: F401  (registers the heads)
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    head_fast, head_stock = _heads(MODELS, fast, stock, **cfg)
    assert type(head_fast).__mro__[1].__name__ == stock
    torch.manual_seed(2)
    feats = [torch.randn(2, c, 64 // 2 ** i, 64 // 2 ** i) for i, c in enumerate((8, 16, 32, 64))]
    samples = []
    for _ in range(2):
        sample = SegDataSample()
        label = torch.randint(0, 5, (1, 256, 256))
        label[:, :10] = 255
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    results = []
    for head in (head_fast, head_stock):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            losses = head.loss(feats, samples, dict())
        grads = torch.autograd.grad(losses['loss_ce'], list(head.parameters()))
        results.append((losses, grads))
    (fast_losses, fast_grads), (stock_losses, stock_grads) = results
    assert set(fast_losses) == set(stock_losses) == {'loss_ce', 'acc_seg'}
    torch.testing.assert_close(fast_losses['loss_ce'], stock_losses['loss_ce'], rtol=1e-5, atol=1e-6)
    # bf16 scores tie often; the first of tied classes (argmax) and topk's pick can differ on a few pixels
    acc_tol = dict(rtol=0, atol=0.05) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_losses['acc_seg'], stock_losses['acc_seg'], **acc_tol)
    tol = dict(rtol=2e-2, atol=1e-3) if autocast else dict(rtol=1e-4, atol=1e-6)  # bf16 gradients rounded
    for a, b in zip(fast_grads, stock_grads):
        torch.testing.assert_close(a, b, **tol)
