"""The Triton depthwise 7x7 kernels (convnextv2_dense.models.fused.dwconv) against torch, on the CPU.

Triton's interpreter (TRITON_INTERPRET=1, set before the kernels are decorated) runs them on CPU tensors:
the convolution, its three gradients, the fused LayerNorm, the custom ops torch.compile sees, and the block
wired through them, each against plain torch with random non-zero weights, on maps whose width, height and
channel count are not multiples of the kernels' blocks.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

from convnextv2_dense.models import fused
from convnextv2_dense.models.block import Block

from test_fused import NO_TRITON_ON_CPU, cpu_convolves, random_block, rel

pytestmark = NO_TRITON_ON_CPU


@pytest.fixture(scope='module')
def kernels():
    os.environ['TRITON_INTERPRET'] = '1'  # must be set before the kernels are decorated
    from triton.runtime.interpreter import InterpretedFunction
    module = importlib.import_module('convnextv2_dense.models.fused.dwconv')
    if not isinstance(module._dwconv_kernel, InterpretedFunction):
        module = importlib.reload(module)
    return module


def conv_inputs(n, c, h, w, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last).requires_grad_()
    weight = (torch.randn(c, 1, 7, 7) * 0.2).requires_grad_()
    bias = torch.randn(c).requires_grad_()
    return x, weight, bias


@pytest.mark.parametrize('shape', [(2, 8, 5, 7), (1, 136, 3, 10), (1, 4, 9, 1)])
def test_convolution_and_its_gradients_equal_torch(kernels, shape):
    x, weight, bias = conv_inputs(*shape)
    y = kernels.depthwise7x7(x, weight, bias)
    ref = F.conv2d(x, weight, bias, padding=3, groups=shape[1])
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel(y, ref) < 1e-6
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, weight, bias], grad)
    want = torch.autograd.grad(ref, [x, weight, bias], grad)
    for name, a, b in zip(('x', 'weight', 'bias'), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel(a, b) < 1e-6, (name, rel(a, b))


@pytest.mark.parametrize('blocks', [(4, 8, 64, 4), (2, 4, 32, 4)])
def test_row_block_variant_equals_torch(kernels, blocks):
    """The second forward kernel (several output rows per program), kept to be timed against the first."""
    x, weight, bias = conv_inputs(2, 40, 7, 9, seed=7)
    y = kernels._launch_rows(kernels._nhwc(x.detach()), kernels._taps(weight), bias.detach(), torch.float32, *blocks)
    assert rel(y, F.conv2d(x, weight, bias, padding=3, groups=40).permute(0, 2, 3, 1)) < 1e-6


def test_no_bias(kernels):
    x, weight, _ = conv_inputs(1, 6, 4, 4, seed=1)
    y = kernels.depthwise7x7(x, weight)
    assert rel(y, F.conv2d(x, weight, padding=3, groups=6)) < 1e-6
    dx, dw = torch.autograd.grad(y.square().sum(), [x, weight])
    ref = F.conv2d(x, weight, padding=3, groups=6)
    rx, rw = torch.autograd.grad(ref.square().sum(), [x, weight])
    assert rel(dx, rx) < 1e-6 and rel(dw, rw) < 1e-6


@pytest.mark.parametrize('fuse_limit', [2048, 16])  # 16: the 24-channel map takes the unfused route
def test_convolution_with_layer_norm_equals_torch(kernels, monkeypatch, fuse_limit):
    monkeypatch.setattr(kernels, 'MAX_NORM_CHANNELS', fuse_limit)
    x, weight, bias = conv_inputs(2, 24, 6, 5, seed=2)
    nw, nb = torch.randn(24), torch.randn(24)
    y = kernels.depthwise7x7_norm(x.detach(), weight, bias, nw, nb, 1e-6)
    ref = F.layer_norm(F.conv2d(x, weight, bias, padding=3, groups=24).permute(0, 2, 3, 1), (24,), nw, nb, 1e-6)
    assert y.shape == (2, 6, 5, 24) and rel(y, ref) < 1e-6


def test_bf16_is_within_1e_2_of_fp32(kernels):
    if not cpu_convolves(torch.bfloat16):
        pytest.skip('this torch has no CPU convolution in bf16')
    x, weight, bias = conv_inputs(2, 12, 6, 6, seed=3)
    ref = F.conv2d(x, weight, bias, padding=3, groups=12)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, weight, bias], grad)
    xb = x.detach().bfloat16().requires_grad_()
    y = kernels.depthwise7x7(xb, weight, bias)
    assert y.dtype == torch.bfloat16 and rel(y, ref) < 1e-2
    got = torch.autograd.grad(y, [xb, weight, bias], grad.bfloat16())
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert max(rel(a, b) for a, b in zip(got, want)) < 1e-2


def test_bad_shapes_are_named(kernels):
    with pytest.raises(ValueError, match=r'\(C, 1, 7, 7\) kernel, got \(2, 8, 4, 4\) and \(8, 1, 3, 3\)'):
        kernels.depthwise7x7(torch.zeros(2, 8, 4, 4), torch.zeros(8, 1, 3, 3))


@pytest.mark.skipif(not hasattr(torch.library, 'opcheck'), reason='torch.library.opcheck needs torch >= 2.4')
def test_custom_ops_for_torch_compile(kernels):
    x, weight, bias = conv_inputs(1, 8, 5, 6, seed=4)
    y = torch.ops.convnextv2_dense.dwconv7x7(x, weight, bias)
    ref = F.conv2d(x, weight, bias, padding=3, groups=8)
    assert rel(y, ref) < 1e-6 and y.stride() == ref.stride()
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, weight, bias], grad)
    want = torch.autograd.grad(ref, [x, weight, bias], grad)
    assert max(rel(a, b) for a, b in zip(got, want)) < 1e-6
    checks = ('test_schema', 'test_faketensor', 'test_autograd_registration')
    torch.library.opcheck(torch.ops.convnextv2_dense.dwconv7x7, (x, weight, bias), test_utils=checks)
    torch.library.opcheck(torch.ops.convnextv2_dense.dwconv7x7, (x, weight, None), test_utils=checks)
    norm_args = (x.detach(), weight.detach(), bias.detach(), torch.randn(8), torch.randn(8), 1e-6)
    torch.library.opcheck(torch.ops.convnextv2_dense.dwconv7x7_norm, norm_args, test_utils=checks[:2])


def test_block_through_the_kernels_equals_the_plain_block(kernels, monkeypatch):
    block = random_block(20, seed=5)
    x = torch.randn(2, 20, 6, 7).to(memory_format=torch.channels_last)
    plain_train = torch.autograd.grad(block(x.requires_grad_()).square().sum(), [x, *block.parameters()])
    with torch.no_grad():
        plain_eval = block(x)
    monkeypatch.setattr(fused, 'use_triton_conv', lambda mode, t: True)  # the CUDA decision, on the CPU
    monkeypatch.setattr(fused, 'dwconv_kernels', lambda: kernels)
    train = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    with torch.no_grad():
        evaluated = block(x)
    assert rel(evaluated, plain_eval) < 1e-5
    assert max(rel(a, b) for a, b in zip(train, plain_train)) < 1e-5


def test_cpu_and_false_keep_cudnn():
    x = torch.randn(1, 8, 4, 4)
    assert not fused.use_triton_conv(None, x) and not fused.use_triton_conv(True, x)
    if torch.cuda.is_available() and fused.triton_available():
        assert fused.use_triton_conv(True, x.cuda()) and not fused.use_triton_conv(False, x.cuda())
    block = Block(8)
    assert block.fused_block is None


@pytest.mark.skipif(not fused.dwconv_ops.COMPILABLE, reason='custom ops need torch >= 2.4')
def test_compiled_block_keeps_the_custom_ops(kernels, monkeypatch):
    block = random_block(12, seed=6)
    x = torch.randn(2, 12, 5, 5).to(memory_format=torch.channels_last)
    want = torch.autograd.grad(block(x.requires_grad_()).square().sum(), [x, *block.parameters()])
    monkeypatch.setattr(fused, 'use_triton_conv', lambda mode, t: True)
    calls = []
    real = fused.dwconv_ops.conv

    def counted(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(fused.dwconv_ops, 'conv', counted)
    # aot_eager: dynamo and AOT autograd as for inductor (fake tensors, the ops' registered gradient), no codegen
    compiled = torch.compile(block, backend='aot_eager', fullgraph=True)
    got = torch.autograd.grad(compiled(x).square().sum(), [x, *block.parameters()])
    assert calls, 'the compiled block did not go through the custom op'
    assert max(rel(a, b) for a, b in zip(got, want)) < 1e-5
