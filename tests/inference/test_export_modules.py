"""The export-safe stand-ins for GRN and adaptive pooling equal the eager layers."""
import pytest
import torch

from convnextv2_dense.inference.export_modules import (BackboneExport, ExportAdaptiveAvgPool2d, ExportGRN,
                                                       make_exportable)
from convnextv2_dense.models import ConvNeXtV2
from convnextv2_dense.models.layers import GRN


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (2, 5)])
@pytest.mark.parametrize('size', [(4, 4), (16, 16), (7, 13), (2, 9)])
def test_adaptive_pool_matches_pytorch(output_size, size):
    x = torch.randn(2, 3, *size)
    expected = torch.nn.AdaptiveAvgPool2d(output_size)(x)
    torch.testing.assert_close(ExportAdaptiveAvgPool2d(output_size)(x), expected, rtol=1e-5, atol=1e-6)


def _random_grn(dim=16):
    grn = GRN(dim)
    torch.nn.init.normal_(grn.gamma)
    torch.nn.init.normal_(grn.beta)
    return grn


def test_export_grn_matches_grn():
    grn = _random_grn()
    x = torch.randn(2, 5, 6, 16)
    torch.testing.assert_close(ExportGRN(grn)(x), grn(x), rtol=1e-5, atol=1e-5)


def test_export_grn_does_not_overflow_in_fp16():
    grn = _random_grn().half()
    x = (torch.randn(1, 32, 32, 16) * 100).half()  # sum of squares ~1e7, past fp16's 65504
    naive = torch.sqrt((x * x).sum(dim=(1, 2)))
    assert not torch.isfinite(naive).all()  # what an fp16 reduction would do
    out = ExportGRN(grn)(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), _ref(grn, x), rtol=1e-2, atol=1e-1)


def _ref(grn, x):
    g32 = GRN(grn.gamma.numel())
    g32.load_state_dict({k: v.float() for k, v in grn.state_dict().items()})
    return g32(x.float())


def test_make_exportable_swaps_every_grn_and_keeps_outputs():
    torch.manual_seed(0)
    model = BackboneExport(ConvNeXtV2(arch='atto')).eval()
    for block in model.backbone.stages[0]:
        torch.nn.init.normal_(block.grn.gamma)
    x = torch.rand(1, 3, 64, 64) * 255
    expected = model(x)
    counts = make_exportable(model)
    assert counts == {'GRN': sum(model.backbone.depths), 'AdaptiveAvgPool2d': 0}
    assert not any(isinstance(m, GRN) for m in model.modules())
    for a, b in zip(model(x), expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
