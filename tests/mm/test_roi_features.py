"""Backbone -> FPN -> mmcv RoIAlign gives the RoI features of plain NCHW maps.

mmcv's RoIAlign (C++ and CUDA) indexes its input as contiguous NCHW; a channels-last-strided feature map
is read wrong without any error. The trunk runs channels-last inside, so this guards the hand-over: the
features the extractor gets from the model must give the RoI features of the same values laid out NCHW.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip('mmdet')
import convnextv2_dense  # noqa: E402,F401 - registers ConvNeXtV2 in mmdet's MODELS (the test must not rely on order)


DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU'))]


def nchw_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values in fresh NCHW-contiguous memory, whatever the layout of ``t``."""
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.contiguous_format)
    return out.copy_(t)


@pytest.mark.parametrize('device', DEVICES)
def test_roi_features_equal_those_of_nchw_maps(device):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='ConvNeXtV2', arch='atto'))
    neck = MODELS.build(dict(type='FPN', in_channels=[40, 80, 160, 320], out_channels=16, num_outs=5))
    extractor = MODELS.build(dict(type='SingleRoIExtractor', out_channels=16, featmap_strides=[4, 8, 16, 32],
                                  roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0)))
    backbone, neck = backbone.to(device), neck.to(device)
    rois = torch.tensor([[0, 4., 6., 60., 50.], [1, 10., 20., 120., 110.], [0, 0., 0., 127., 127.]], device=device)
    with torch.no_grad():
        feats = neck(backbone(torch.randn(2, 3, 128, 128, device=device)))[:4]
        got = extractor(feats, rois)
        want = extractor(tuple(nchw_copy(f) for f in feats), rois)
    assert got.abs().max() > 0  # a blank result would compare equal to a blank reference
    torch.testing.assert_close(got, want)
