"""GELU -> GRN -> Linear (the second half of a ConvNeXt V2 block) as one autograd function, in fewer passes.

GRN is a per-(image, channel) affine ``a * s + beta`` with ``s = 1 + gamma * Nx``, so the Linear that
follows can absorb it: ``(a * s + beta) @ W.T + b = a @ (W * s).T + (W @ beta + b)``. The forward pass
reads the 4C-wide activation ``h`` once (GELU and the GRN statistics together), scales the small weight
per image, and runs one batched matmul; no GRN output is ever written. The backward pass mirrors it:
``da = dout @ (W * s)``, the weight gradient per image ``dout.T @ a`` gives both ``dW`` and ``ds``, and
one elementwise pass turns ``da`` plus the statistics' term into ``dh`` through the GELU derivative.

The folded weight is (N, C, K): on small maps with many images it outgrows the activation. There the
applied form (:func:`gelu_grn_linear` with ``fold=False``) writes the GRN output ``g = gelu(h) * s + beta``
in one pass (after a statistics pass that reads ``h`` only) and runs one plain matmul; its backward sums
``dg * a`` and ``dg`` per (image, channel) in one pass and forms ``dh`` in another, recomputing ``a`` from
``h`` each time, so ``a`` is never stored.

:func:`gelu_grn_mlp` takes the first Linear in too: two matmul passes (:mod:`.mlp_gemm` on CUDA), GELU and the
statistics in the first one's epilogue, GRN's affine in the second one's prologue, the residual in its
epilogue; its backward is the applied form's with ``g`` recomputed.

The elementwise passes are pluggable (:class:`TorchOps` here, Triton kernels in :mod:`.triton_ops`);
everything else is plain PyTorch. Statistics and the small per-image tensors are fp32; the big tensors stay
in the activation's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..layers import grn_scale, grn_scale_backward


def _grn_affine(a: torch.Tensor, s: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """GRN's per-(image, channel) affine ``a * s + beta`` on (N, L, K) ``a``, in fp32, rounded to ``a``'s dtype."""
    return (a.float() * s[:, None, :] + beta.float()).to(a.dtype)


class TorchOps:
    """The two elementwise passes in plain PyTorch: the reference the kernels are tested against."""

    @staticmethod
    def gelu_sumsq(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a = gelu(h)`` (exact erf form, in ``h``'s dtype) and ``sum over L of a**2`` in fp32, (N, K).

        Args:
            h (Tensor): (N, L, K) activations.
        """
        a = F.gelu(h)
        return a, a.float().square().sum(dim=1)

    @staticmethod
    def gelu_grad(h: torch.Tensor, a: torch.Tensor, da: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``dh = (da + a * r) * gelu'(h)`` in ``h``'s dtype; ``r`` is (N, K) fp32, the rest (N, L, K)."""
        x = h.float()
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return ((da.float() + a.float() * r[:, None, :]) * (cdf + x * pdf)).to(h.dtype)

    @staticmethod
    def sumsq_of_gelu(h: torch.Tensor) -> torch.Tensor:
        """``sum over L of gelu(h)**2`` in fp32, (N, K), with ``gelu(h)`` rounded to ``h``'s dtype."""
        return TorchOps.gelu_sumsq(h)[1]

    @staticmethod
    def gelu_grn(h: torch.Tensor, s: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``g = gelu(h) * s + beta`` in ``h``'s dtype; ``s`` is (N, K) fp32, ``beta`` (K,)."""
        return _grn_affine(F.gelu(h), s, beta)

    @staticmethod
    def grn_grad_sums(h: torch.Tensor, dg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sum over L of dg * gelu(h)`` and ``sum over L of dg``, both (N, K) fp32."""
        dg = dg.float()
        return (dg * F.gelu(h).float()).sum(dim=1), dg.sum(dim=1)

    @staticmethod
    def gelu_grn_grad(h: torch.Tensor, dg: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``dh = (dg * s + a * r) * gelu'(h)`` with ``a = gelu(h)`` in ``h``'s dtype; ``s``, ``r`` (N, K) fp32."""
        return TorchOps.gelu_grad(h, F.gelu(h), dg.float() * s[:, None, :], r)

    @staticmethod
    def linear_gelu_sumsq(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          store_gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``h = y @ weight.T + bias`` (``gelu(h)`` with ``store_gelu``) in ``y``'s dtype and ``sum over L of
        gelu(h)**2`` (N, K) fp32; ``y`` is (N, L, C), ``weight`` (K, C) in ``y``'s dtype, ``bias`` (K,) fp32."""
        h = F.linear(y, weight, bias.to(y.dtype))
        a, sumsq = TorchOps.gelu_sumsq(h)
        return (a if store_gelu else h), sumsq

    @staticmethod
    def grn_linear(h: torch.Tensor, s: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   residual: torch.Tensor | None = None, gelu: bool = True) -> torch.Tensor:
        """``(gelu(h) * s + beta) @ weight.T + bias`` (``h`` is ``gelu(h)`` already without ``gelu``), plus
        ``residual`` (N, L, C) if given; ``weight`` (C, K) in ``h``'s dtype, ``bias`` (C,) and ``beta`` (K,) fp32."""
        g = TorchOps.gelu_grn(h, s, beta) if gelu else _grn_affine(h, s, beta)
        out = F.linear(g, weight, bias.to(h.dtype))
        return out if residual is None else residual + out


def _applied_backward(ops: type, dout: torch.Tensor, h: torch.Tensor, g: torch.Tensor, weight_h: torch.Tensor,
                      gx: torch.Tensor, denom: torch.Tensor, nx: torch.Tensor, s: torch.Tensor,
                      gamma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The applied form's backward, ``out = g @ weight.T + bias`` with ``g = gelu(h) * s + beta``, from the
    output gradient ``dout`` (N, L, C): ``dh`` and the gradients of gamma, beta, the weight and the bias."""
    n, length, k = h.shape
    dbias = dout.float().sum(dim=(0, 1))
    dout = dout.to(h.dtype).reshape(n * length, -1)
    dweight = dout.t() @ g.reshape(n * length, k)
    dg = (dout @ weight_h).view(n, length, k)
    ds, dbeta = ops.grn_grad_sums(h, dg)
    dgamma, r = grn_scale_backward(ds, gx, denom, nx, gamma)
    return ops.gelu_grn_grad(h, dg, s, r), dgamma, dbeta.sum(dim=0), dweight, dbias


def _grn_scale(sumsq: torch.Tensor, gamma: torch.Tensor, eps: float):
    """GRN's statistics from the (N, K) fp32 sums of squares: ``gx``, ``denom``, ``nx`` and the scale ``s``."""
    gx = sumsq.sqrt()
    return (gx, *grn_scale(gx, gamma, eps))


class GeluGrnLinear(torch.autograd.Function):
    """``Linear(GRN(GELU(h)))`` on (N, L, K) ``h``, output (N, L, C); parameters as in the plain block."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, eps: float, ops: type) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            a, sumsq = ops.gelu_sumsq(h)
            gx, denom, nx, s = _grn_scale(sumsq, gamma, eps)  # s: (N, K)
            w = weight.float()
            wn = (w[None] * s[:, None, :]).to(h.dtype)  # (N, C, K): the weight with GRN folded in
            b = torch.addmv(bias.float(), w, beta.float()).to(h.dtype)
            out = torch.baddbmm(b, a, wn.transpose(1, 2))
        ctx.save_for_backward(h, a, wn, gx, denom, nx, s, gamma, beta, weight)
        ctx.ops = ops
        ctx.param_dtypes = (gamma.dtype, beta.dtype, weight.dtype, bias.dtype)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        h, a, wn, gx, denom, nx, s, gamma, beta, weight = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            dout = dout.to(h.dtype).contiguous()
            dsum = dout.float().sum(dim=(0, 1))  # (C,)
            dwn = torch.bmm(dout.transpose(1, 2), a).float()  # (N, C, K): dL/d(weight * s_n)
            w = weight.float()
            dweight = torch.einsum('nck,nk->ck', dwn, s) + torch.outer(dsum, beta.float())
            ds = torch.einsum('nck,ck->nk', dwn, w)
            dgamma, r = grn_scale_backward(ds, gx, denom, nx, gamma)
            dh = ctx.ops.gelu_grad(h, a, torch.bmm(dout, wn), r)
        gdt, bdt, wdt, bidt = ctx.param_dtypes
        return (dh, dgamma.to(gdt), (w.t() @ dsum).to(bdt), dweight.to(wdt), dsum.to(bidt), None, None)


class GeluGrnThenLinear(torch.autograd.Function):
    """:class:`GeluGrnLinear` in the applied form: the GRN output is written and the Linear is one plain matmul."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, eps: float, ops: type) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            gx, denom, nx, s = _grn_scale(ops.sumsq_of_gelu(h), gamma, eps)
            g = ops.gelu_grn(h, s, beta)
            weight_h = weight.to(h.dtype)  # cast once, kept for the backward's dg
            out = F.linear(g, weight_h, bias.to(h.dtype))
        ctx.save_for_backward(h, g, gx, denom, nx, s, gamma, weight_h)
        ctx.ops = ops
        ctx.param_dtypes = (gamma.dtype, beta.dtype, weight.dtype, bias.dtype)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        h, g, gx, denom, nx, s, gamma, weight_h = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            dh, *grads = _applied_backward(ctx.ops, dout, h, g, weight_h, gx, denom, nx, s, gamma)
        return (dh, *(grad.to(dtype) for grad, dtype in zip(grads, ctx.param_dtypes)), None, None)


def mlp_forward(ops: type, y: torch.Tensor, weight1_h: torch.Tensor, bias1: torch.Tensor, gamma: torch.Tensor,
                beta: torch.Tensor, weight2_h: torch.Tensor, bias2: torch.Tensor, residual: torch.Tensor | None,
                eps: float, inference: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """The matmul form's two passes on (N, L, C) ``y``, weights already in ``y``'s dtype, autocast off: the output,
    the first matmul's ``h`` (``gelu(h)`` if ``inference``: the second matmul then applies no GELU), the (N, K)
    fp32 sums of squares of ``gelu(h)`` and GRN's statistics ``(gx, denom, nx, s)``."""
    h, sumsq = ops.linear_gelu_sumsq(y, weight1_h, bias1.float(), store_gelu=inference)
    stats = _grn_scale(sumsq, gamma, eps)
    out = ops.grn_linear(h, stats[3], beta.float(), weight2_h, bias2.float(), residual, gelu=not inference)
    return out, h, sumsq, stats


def mlp_backward(ops: type, dout: torch.Tensor, y: torch.Tensor, h: torch.Tensor, stats: tuple, gamma: torch.Tensor,
                 beta: torch.Tensor, weight1_h: torch.Tensor, weight2_h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`mlp_forward`'s backward (training form, autocast off) from the output gradient ``dout``: ``dy`` and
    the gradients of weight1, bias1, gamma, beta, weight2 and bias2 (weights' in ``y``'s dtype, the rest fp32).
    ``g``, the GRN output, is recomputed from ``h``: the forward never wrote it."""
    gx, denom, nx, s = stats
    n, length, k = h.shape
    g = ops.gelu_grn(h, s, beta.float())
    dh, dgamma, dbeta, dweight2, dbias2 = _applied_backward(ops, dout, h, g, weight2_h, gx, denom, nx, s, gamma)
    dh = dh.reshape(n * length, k)
    dweight1 = dh.t() @ y.reshape(n * length, -1)
    dbias1 = dh.float().sum(dim=0)
    dy = (dh @ weight1_h).view(y.shape)
    return dy, dweight1, dbias1, dgamma, dbeta, dweight2, dbias2


class GeluGrnMlp(torch.autograd.Function):
    """The block's whole MLP, ``Linear(GRN(GELU(Linear(y))))`` plus an optional residual, on (N, L, C) ``y``, as
    two matmul passes (``ops.linear_gelu_sumsq``, ``ops.grn_linear``): GELU and the GRN statistics in the first
    one's epilogue, GRN's affine in the second one's prologue and the residual in its epilogue. The backward
    is :class:`GeluGrnThenLinear`'s, with ``g`` recomputed from ``h`` and the first Linear's gradients added
    (:func:`mlp_forward`, :func:`mlp_backward`, which the compiled training op of :mod:`.mlp_ops` shares)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, gamma: torch.Tensor,
                beta: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor, residual: torch.Tensor | None,
                eps: float, ops: type) -> torch.Tensor:
        with torch.autocast(y.device.type, enabled=False):
            weight1_h = weight1.to(y.dtype).contiguous()  # cast once, kept for the backward
            weight2_h = weight2.to(y.dtype).contiguous()
            out, h, _, stats = mlp_forward(ops, y, weight1_h, bias1, gamma, beta, weight2_h, bias2, residual, eps,
                                           inference=not any(ctx.needs_input_grad))
        ctx.save_for_backward(y, h, *stats, gamma, beta, weight1_h, weight2_h)
        ctx.ops = ops
        ctx.has_residual = residual is not None
        ctx.param_dtypes = tuple(p.dtype for p in (weight1, bias1, gamma, beta, weight2, bias2))
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        y, h, gx, denom, nx, s, gamma, beta, weight1_h, weight2_h = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            dy, *grads = mlp_backward(ctx.ops, dout, y, h, (gx, denom, nx, s), gamma, beta, weight1_h, weight2_h)
        return (dy, *(g.to(dt) for g, dt in zip(grads, ctx.param_dtypes)), dout if ctx.has_residual else None,
                None, None)


def gelu_grn_mlp(y: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor, residual: torch.Tensor | None = None,
                 eps: float = 1e-6, ops: type = TorchOps) -> torch.Tensor:
    """The block's MLP ``Linear2(GRN(GELU(Linear1(y))))`` (plus ``residual``) in two matmul passes; see
    :class:`GeluGrnMlp`.

    Args:
        y (Tensor): (N, L, C) normalised block input, any float dtype (the matmuls run in it).
        weight1 (Tensor): (K, C) weight of the first Linear.
        bias1 (Tensor): (K,) bias of the first Linear.
        gamma (Tensor): GRN gamma, K elements (any shape).
        beta (Tensor): GRN beta, K elements.
        weight2 (Tensor): (C, K) weight of the second Linear.
        bias2 (Tensor): (C,) bias of the second Linear.
        residual (Tensor, optional): (N, L, C), added to the output (its gradient passes through). Defaults to None.
        eps (float): GRN's epsilon. Defaults to 1e-6.
        ops (type): The passes, :class:`TorchOps` or the Triton ones. Defaults to TorchOps.

    Returns:
        Tensor: (N, L, C) in ``y``'s dtype, or promoted with ``residual``'s.
    """
    if y.dim() != 3:
        raise ValueError(f'y must be (N, L, C), got shape {tuple(y.shape)}')
    if residual is not None and residual.shape != (*y.shape[:2], weight2.shape[0]):
        raise ValueError(f'residual must be {(*y.shape[:2], weight2.shape[0])}, got {tuple(residual.shape)}')
    k = weight1.shape[0]
    return GeluGrnMlp.apply(y.contiguous(), weight1, bias1, gamma.reshape(k), beta.reshape(k), weight2, bias2,
                            None if residual is None else residual.contiguous(), eps, ops)


def gelu_grn_linear(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, eps: float = 1e-6, ops: type = TorchOps, fold: bool = True) -> torch.Tensor:
    """``Linear(GRN(GELU(h)))`` in fewer passes over ``h``; see the module docstring.

    Args:
        h (Tensor): (N, L, K) output of the first Linear, contiguous, any float dtype.
        gamma (Tensor): GRN gamma, K elements (any shape).
        beta (Tensor): GRN beta, K elements.
        weight (Tensor): (C, K) weight of the second Linear.
        bias (Tensor): (C,) bias of the second Linear.
        eps (float): GRN's epsilon. Defaults to 1e-6.
        ops (type): The elementwise passes, :class:`TorchOps` or the Triton ones. Defaults to TorchOps.
        fold (bool): Fold GRN into the Linear's weight per image (:class:`GeluGrnLinear`), or write its
            output and run one plain matmul (:class:`GeluGrnThenLinear`). Defaults to True.

    Returns:
        Tensor: (N, L, C) in ``h``'s dtype.
    """
    if h.dim() != 3:
        raise ValueError(f'h must be (N, L, K), got shape {tuple(h.shape)}')
    k = h.shape[-1]
    function = GeluGrnLinear if fold else GeluGrnThenLinear
    return function.apply(h.contiguous(), gamma.reshape(k), beta.reshape(k), weight, bias, eps, ops)
