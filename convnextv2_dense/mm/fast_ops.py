"""Exact, faster or leaner replacements for operations of mmseg's training step (torch only).

- :func:`argmax_accuracy`: mmseg's ``accuracy`` (top-1, no threshold) from an argmax instead of a ``topk``
  over all classes, and with no host synchronisation (mmseg's boolean indexing waits for the GPU). Same
  number: ``100 * (correct + eps) / (valid + eps)`` with fp32 eps, except where classes tie for the top
  score (common in bf16): the argmax takes the first, ``topk`` any of them.
- :func:`upsample_bilinear`: ``F.interpolate(x, size, mode='bilinear')`` whose backward is two small
  matrix products with the interpolation matrices (built by ``F.interpolate`` itself, so the weights are
  torch's), instead of torch's backward kernel that scatters with atomic adds. Same gradient up to fp32
  rounding; the products accumulate in fp32 also for bf16/fp16 gradients. Used when upsampling a tensor
  that needs a gradient; anything else goes to ``F.interpolate`` unchanged.
- :func:`recomputed_cross_entropy`: ``F.cross_entropy(..., reduction='none')`` of half-precision scores
  under autocast (which computes it in fp32) that keeps only the scores for the backward and recomputes the
  fp32 log-softmax there, one image at a time, instead of keeping an fp32 log-softmax of every pixel and
  class from the forward until the backward (UperNet-B, 2 x 512x512, 150 classes: 315 MB per head, against
  157 MB of bf16 scores). Same values and gradients bit for bit (the same operators, run again).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..compat import is_capturing

__all__ = ['argmax_accuracy', 'recomputed_cross_entropy', 'upsample_bilinear']


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
        out = grad.new_empty((*grad.shape[:-2], h_in, w_in))
        with torch.autocast(grad.device.type, enabled=False):
            for i in range(grad.shape[0]):  # one image at a time: an fp32 copy of one image's gradient at most
                out[i] = rows.t() @ (grad[i].float() @ cols)  # (C, h_in, w_in), rounded to the dtype on copy
        return out, None, None


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


class _RecomputedCrossEntropy(torch.autograd.Function):
    """Per-element cross-entropy in fp32 that saves the scores in their own dtype and recomputes the rest."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                ignore_index: int) -> torch.Tensor:
        ctx.save_for_backward(scores, target, weight)
        ctx.ignore_index = ignore_index
        with torch.autocast(scores.device.type, enabled=False):
            return F.cross_entropy(scores.float(), target, weight=weight, reduction='none', ignore_index=ignore_index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        scores, target, weight = ctx.saved_tensors
        out = torch.empty_like(scores)
        with torch.enable_grad(), torch.autocast(scores.device.type, enabled=False):
            for i in range(scores.shape[0]):  # one image's fp32 scores and log-softmax alive at a time
                x = scores[i:i + 1].detach().float().requires_grad_()
                loss = F.cross_entropy(x, target[i:i + 1], weight=weight, reduction='none',
                                       ignore_index=ctx.ignore_index)
                out[i:i + 1] = torch.autograd.grad(loss, x, grad[i:i + 1])[0]  # rounded as autocast's cast would
        return out, None, None, None


def recomputed_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                             size_average=None, ignore_index: int = -100, reduce=None, reduction: str = 'mean',
                             label_smoothing: float = 0.0) -> torch.Tensor:
    """``F.cross_entropy`` (same signature and result); leaner in memory where it counts: see the module
    docstring. Used for class-index targets of (N, C, ...) half-precision scores that need a gradient, under
    autocast, with ``reduction='none'`` (what mmseg's ``cross_entropy`` asks for); anything else (fp32 scores
    among it: their log-softmax is no larger than they are) goes to ``F.cross_entropy`` unchanged."""
    half_under_autocast = (input.dtype in (torch.float16, torch.bfloat16)
                           and torch.is_autocast_enabled(input.device.type))
    if (reduction == 'none' and size_average is None and reduce is None and not label_smoothing and half_under_autocast
            and input.requires_grad and torch.is_grad_enabled() and input.dim() >= 3 and input.shape[0] > 0
            and not target.is_floating_point() and not is_capturing()):
        return _RecomputedCrossEntropy.apply(input, target, weight, ignore_index)
    return F.cross_entropy(input, target, weight=weight, size_average=size_average, ignore_index=ignore_index,
                           reduce=reduce, reduction=reduction, label_smoothing=label_smoothing)
