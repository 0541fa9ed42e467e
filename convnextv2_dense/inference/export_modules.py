"""The modules ``tools/export.py`` exports: a backbone, a whole-image segmentor, a detector's features.

Each takes one float32 (or float16) NCHW image batch in RGB order with values 0..255, and does the mm
data preprocessor's normalisation (and its channel swap, for a model trained on BGR) inside the graph,
so an exported file needs nothing but the pixels. What each returns:

- ``BackboneExport``: one feature map per selected stage (``stage1`` .. ``stage4``).
- ``SegmentorExport``: the decode head's logits resized to the input size, as mmseg's whole-image
  inference computes them before the arg-max (``seg_logits``).
- ``DetectorFeaturesExport``: the neck's maps (FPN levels), the part of a two-stage detector that
  runs before the RoI operations.

:func:`make_exportable` swaps two kinds of layer in a copy of the model. GRN: for one that casts to fp32
*before* its reduction; exporters otherwise reduce in fp16 and cast the result (TorchScript's ONNX
exporter does), and the sum of squares of a 4C-wide activation overflows fp16's 65504 (TensorRT users
of the official models saw zero detections from exactly this). Adaptive average pooling: for matrix
products that ONNX can run at any input size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import GRN


class ExportGRN(nn.Module):
    """GRN whose statistics are computed from an fp32 copy of the input, in any graph an exporter makes.

    Shares ``gamma`` and ``beta`` with the GRN it replaces; numerically the same as :class:`GRN`.

    Args:
        grn (GRN): The layer to replace.
    """

    def __init__(self, grn: GRN) -> None:
        super().__init__()
        self.gamma, self.beta, self.eps = grn.gamma, grn.beta, grn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        gx = torch.sqrt((x32 * x32).sum(dim=(1, 2), keepdim=True))
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        scale = 1.0 + self.gamma.float() * nx
        return x * scale.to(x.dtype) + self.beta.to(x.dtype)


class ExportAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two small matrix products, so that ONNX graphs keep a dynamic input size.

    ONNX has no adaptive pooling: exporters turn it into a fixed-kernel ``AveragePool`` computed from the
    traced size, which is wrong at any other size and impossible when the size is not a multiple of the
    output (UperNet's pyramid pools to 1, 2, 3 and 6). Here the pooling matrices are built from the
    input's size inside the graph: bin ``i`` of ``n`` inputs spans ``floor(i n / out) .. ceil((i + 1) n /
    out)``, as in PyTorch.

    Args:
        output_size (int | tuple[int, int]): As for ``nn.AdaptiveAvgPool2d``.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if None in size:
            raise ValueError(f'adaptive pooling to {output_size!r} (a None size) cannot be exported')
        self.output_size = size

    @staticmethod
    def _matrix(ones: torch.Tensor, out: int) -> torch.Tensor:
        """``(out, n)`` averaging weights from a vector of ``n`` ones (its length is traced, not fixed)."""
        n = ones.sum()
        pos = ones.cumsum(0) - 1
        idx = torch.arange(out, device=ones.device, dtype=ones.dtype)
        start = torch.floor(idx * n / out)
        end = torch.ceil((idx + 1) * n / out)
        inside = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(ones.dtype)
        return inside / inside.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[0, 0].float())
        rows = self._matrix(ones[:, 0], self.output_size[0]).to(x.dtype)
        cols = self._matrix(ones[0, :], self.output_size[1]).to(x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.t())


def make_exportable(model: nn.Module) -> dict[str, int]:
    """Swap GRN for :class:`ExportGRN` and adaptive average pooling for :class:`ExportAdaptiveAvgPool2d`.

    In place; use it on a copy, and keep the original as the eager reference.

    Args:
        model (nn.Module): Any module.

    Returns:
        dict[str, int]: How many modules of each kind were replaced.
    """
    counts = {'GRN': 0, 'AdaptiveAvgPool2d': 0}
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GRN):
                setattr(module, name, ExportGRN(child))
                counts['GRN'] += 1
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, ExportAdaptiveAvgPool2d(child.output_size))
                counts['AdaptiveAvgPool2d'] += 1
    return counts


class _Normalize(nn.Module):
    """RGB 0..255 in; ``(x - mean) / std`` in the channel order the model was trained on."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_bgr: bool) -> None:
        super().__init__()
        self.to_bgr = to_bgr
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_bgr:
            x = x.flip(1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @classmethod
    def from_preprocessor(cls, preprocessor: nn.Module) -> '_Normalize':
        """Read mean, std and channel order from an mmengine ``ImgDataPreprocessor`` (or subclass)."""
        if getattr(preprocessor, '_enable_normalize', True) and hasattr(preprocessor, 'mean'):
            mean = preprocessor.mean.flatten().tolist()
            std = preprocessor.std.flatten().tolist()
        else:
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        # mm loads images as BGR; bgr_to_rgb=True (``_channel_conversion``) means the model sees RGB.
        # (mmengine's ImgDataPreprocessor names it ``_channel_conversion``, mmseg's ``channel_conversion``).
        converts = getattr(preprocessor, '_channel_conversion', getattr(preprocessor, 'channel_conversion', False))
        to_bgr = not converts
        return cls(mean, std, to_bgr)


class BackboneExport(nn.Module):
    """A ConvNeXt V2 backbone on raw pixels (ImageNet mean and std unless given).

    Args:
        backbone (nn.Module): A :class:`~convnextv2_dense.models.ConvNeXtV2`.
        mean (Sequence[float]): Per-channel mean, RGB. Defaults to ImageNet's, in 0..255.
        std (Sequence[float]): Per-channel std, RGB. Defaults to ImageNet's, in 0..255.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375)) -> None:
        super().__init__()
        self.normalize = _Normalize(mean, std, to_bgr=False)
        self.backbone = backbone
        self.output_names = tuple(getattr(backbone, 'out_features', ()))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(self.normalize(image)))


class SegmentorExport(nn.Module):
    """An mmseg encoder-decoder in whole-image mode: pixels in, logits at the input size out.

    Args:
        segmentor (nn.Module): An mmseg ``EncoderDecoder`` (e.g. UperNet).
    """

    output_names = ('seg_logits',)

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.normalize = _Normalize.from_preprocessor(segmentor.data_preprocessor)
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.segmentor.extract_feat(self.normalize(image))
        logits = self.segmentor.decode_head.forward(x)
        return F.interpolate(logits, size=image.shape[2:], mode='bilinear',
                             align_corners=self.segmentor.decode_head.align_corners)


class DetectorFeaturesExport(nn.Module):
    """An mmdet two-stage detector's backbone and neck: pixels in, the neck's maps out.

    The input's height and width should be multiples of the data preprocessor's ``pad_size_divisor``
    (32 for the shipped configs), as mmdet pads them before the backbone.

    Args:
        detector (nn.Module): An mmdet detector with ``extract_feat`` (e.g. Mask R-CNN).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.normalize = _Normalize.from_preprocessor(detector.data_preprocessor)
        self.detector = detector
        levels = len(getattr(getattr(detector, 'neck', None), 'lateral_convs', ())) or 0
        num_outs = getattr(getattr(detector, 'neck', None), 'num_outs', levels)
        self.output_names = tuple(f'p{i + 2}' for i in range(num_outs))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector.extract_feat(self.normalize(image)))
