"""Exact, faster replacements for operations of mmseg's training step (torch only).

- :func:`argmax_accuracy`: mmseg's ``accuracy`` (top-1, no threshold) from an argmax instead of a ``topk``
  over all classes, and with no host synchronisation (mmseg's boolean indexing waits for the GPU). Same
  number: ``100 * (correct + eps) / (valid + eps)`` with fp32 eps, except where classes tie for the top
  score (common in bf16): the argmax takes the first, ``topk`` any of them.
- :func:`upsample_bilinear`: ``F.interpolate(x, size, mode='bilinear')`` whose backward is two small
  matrix products with the interpolation matrices (built by ``F.interpolate`` itself, so the weights are
  torch's), instead of torch's backward kernel that scatters with atomic adds. Same gradient up to fp32
  rounding; the products accumulate in fp32 also for bf16/fp16 gradients. Used when upsampling a tensor
  that needs a gradient; anything else goes to ``F.interpolate`` unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..compat import is_capturing

__all__ = ['argmax_accuracy', 'upsample_bilinear']


def argmax_accuracy(pred: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Top-1 accuracy in percent, as mmseg's ``accuracy(pred, target, ignore_index=...)``, shape (1,).

    Args:
        pred (Tensor): (N, num_classes, ...) scores.
        target (Tensor): (N, ...) labels.
        ignore_index (int, optional): Label not counted. Defaults to None.
    """
    if pred.shape[0] == 0:
        return pred.new_zeros(())
    if pred.dim() != target.dim() + 1 or pred.shape[0] != target.shape[0]:
        raise ValueError(f'pred must be (N, C, ...) and target (N, ...), got {tuple(pred.shape)} and '
                         f'{tuple(target.shape)}')
    # max().indices, not argmax(): the same first maximal index, and on the CPU argmax over the channel
    # dim of NCHW scores is ~15x slower (20 ms for 8x5x128x128, 13% of the demo's training step)
    correct = pred.max(dim=1).indices == target
    eps = torch.finfo(torch.float32).eps
    if ignore_index is None:
        valid = torch.tensor(float(target.numel()), device=target.device)
    else:
        keep = target != ignore_index
        correct = correct & keep
        valid = keep.sum().float()
    return ((correct.sum().float() + eps) * 100.0 / (valid + eps)).reshape(1)


def _interpolation_matrix(n_in: int, n_out: int, align_corners: bool | None, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): row o holds the weights of the inputs in output o, computed by F.interpolate."""
    eye = torch.eye(n_in, device=device, dtype=torch.float32).view(n_in, 1, 1, n_in)
    return F.interpolate(eye, size=(1, n_out), mode='bilinear', align_corners=align_corners).view(n_in, n_out).t()


class _UpsampleBilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, int], align_corners: bool | None) -> torch.Tensor:
        ctx.in_size, ctx.align_corners, ctx.dtype = tuple(x.shape[-2:]), align_corners, x.dtype
        return F.interpolate(x, size=size, mode='bilinear', align_corners=align_corners)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (h_in, w_in), (h_out, w_out) = ctx.in_size, grad.shape[-2:]
        rows = _interpolation_matrix(h_in, h_out, ctx.align_corners, grad.device)  # (h_out, h_in)
        cols = _interpolation_matrix(w_in, w_out, ctx.align_corners, grad.device)  # (w_out, w_in)
        with torch.autocast(grad.device.type, enabled=False):
            out = rows.t() @ (grad.float() @ cols)  # (..., h_in, w_in)
        return out.to(ctx.dtype), None, None


def upsample_bilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=...)`` with a faster exact backward.

    Args:
        x (Tensor): (N, C, H, W).
        size (Sequence[int]): Output (H', W'), each at least the input's.
        align_corners (bool, optional): As in ``F.interpolate``. Defaults to None.
    """
    if x.requires_grad and torch.is_grad_enabled() and x.dim() == 4 and not is_capturing():
        size = tuple(int(s) for s in size)
        if size[0] >= x.shape[-2] and size[1] >= x.shape[-1] and size != tuple(x.shape[-2:]):
            return _UpsampleBilinear.apply(x, size, align_corners)
    # ``size`` as given: int() of a traced size would freeze it into an exported graph (tools/export.py)
    return F.interpolate(x, size=size, mode='bilinear', align_corners=align_corners)
