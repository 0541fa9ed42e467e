"""The Triton depthwise 7x7 convolution with its LayerNorm (convnextv2_dense.models.fused.dwconv), on the CPU.

Triton's interpreter (TRITON_INTERPRET=1, set before the kernel is decorated) runs it on CPU tensors: the
pass, the custom op torch.compile sees, and the block wired through it, each against plain torch with random
non-zero weights, on maps whose width, height and channel count are not multiples of the kernel's blocks;
and the rule that keeps it to inference, narrow maps and large batches.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

from convnextv2_dense.models import fused
from convnextv2_dense.models.block import Block

from test_fused import NO_TRITON_ON_CPU, FakeCuda, cpu_convolves, random_block, rel


@pytest.fixture(scope='module')
def kernels():
    os.environ['TRITON_INTERPRET'] = '1'  # must be set before the kernels are decorated
    from triton.runtime.interpreter import InterpretedFunction
    module = importlib.import_module('convnextv2_dense.models.fused.dwconv')
    if not isinstance(module._dwconv_norm_kernel, InterpretedFunction):
        module = importlib.reload(module)
    return module


def conv_inputs(n, c, h, w, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, 7, 7) * 0.2, torch.randn(c)
    norm_weight, norm_bias = torch.randn(c), torch.randn(c)
    return x, weight, bias, norm_weight, norm_bias


def reference(x, weight, bias, norm_weight, norm_bias):
    c = x.shape[1]
    return F.layer_norm(F.conv2d(x, weight, bias, padding=3, groups=c).permute(0, 2, 3, 1), (c,), norm_weight,
                        norm_bias, 1e-6)


@NO_TRITON_ON_CPU
@pytest.mark.parametrize('shape', [(2, 24, 6, 5), (1, 136, 3, 10), (1, 4, 9, 1), (1, 256, 2, 3)])
def test_convolution_with_layer_norm_equals_torch(kernels, shape):
    x, weight, bias, nw, nb = conv_inputs(*shape)
    y = kernels.depthwise7x7_norm(x, weight, bias, nw, nb, 1e-6)
    n, c, h, w = shape
    assert y.shape == (n, h, w, c) and y.is_contiguous() and rel(y, reference(x, weight, bias, nw, nb)) < 1e-6
    assert rel(kernels.depthwise7x7_norm(x, weight, None, nw, nb, 1e-6), reference(x, weight, None, nw, nb)) < 1e-6


@NO_TRITON_ON_CPU
def test_bf16_is_within_1e_2_of_fp32(kernels):
    if not cpu_convolves(torch.bfloat16):
        pytest.skip('this torch has no CPU convolution in bf16')
    x, weight, bias, nw, nb = conv_inputs(2, 12, 6, 6, seed=3)
    y = kernels.depthwise7x7_norm(x.bfloat16(), weight, bias, nw, nb, 1e-6)
    assert y.dtype == torch.bfloat16 and rel(y, reference(x, weight, bias, nw, nb)) < 1e-2


@NO_TRITON_ON_CPU
def test_bad_shapes_are_named(kernels):
    with pytest.raises(ValueError, match=r'\(C, 1, 7, 7\) kernel, got \(2, 8, 4, 4\) and \(8, 1, 3, 3\)'):
        kernels.depthwise7x7_norm(torch.zeros(2, 8, 4, 4), torch.zeros(8, 1, 3, 3), None, torch.ones(8),
                                  torch.zeros(8), 1e-6)
    with pytest.raises(ValueError, match='at most 256 channels, got 384'):
        kernels.depthwise7x7_norm(torch.zeros(1, 384, 4, 4), torch.zeros(384, 1, 7, 7), None, torch.ones(384),
                                  torch.zeros(384), 1e-6)


@NO_TRITON_ON_CPU
@pytest.mark.skipif(not hasattr(torch.library, 'opcheck'), reason='torch.library.opcheck needs torch >= 2.4')
def test_custom_op_for_torch_compile(kernels):
    x, weight, bias, nw, nb = conv_inputs(1, 8, 5, 6, seed=4)
    y = torch.ops.convnextv2_dense.dwconv7x7_norm(x, weight, bias, nw, nb, 1e-6)
    assert rel(y, reference(x, weight, bias, nw, nb)) < 1e-6
    torch.library.opcheck(torch.ops.convnextv2_dense.dwconv7x7_norm, (x, weight, bias, nw, nb, 1e-6),
                          test_utils=('test_schema', 'test_faketensor'))


@NO_TRITON_ON_CPU
def test_block_through_the_kernel_equals_the_plain_block_and_training_keeps_cudnn(kernels, monkeypatch):
    block = random_block(20, seed=5)
    x = torch.randn(2, 20, 6, 7).to(memory_format=torch.channels_last)
    plain_train = torch.autograd.grad(block(x.requires_grad_()).square().sum(), [x, *block.parameters()])
    with torch.no_grad():
        plain_eval = block(x)
    monkeypatch.setattr(fused, 'use_triton_conv', lambda mode, t: True)  # the CUDA decision, on the CPU
    calls = []
    monkeypatch.setattr(fused, 'dwconv_kernels', lambda: calls.append(1) or kernels)
    with torch.no_grad():
        evaluated = block(x)
    assert calls and rel(evaluated, plain_eval) < 1e-5
    calls.clear()
    train = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    assert not calls, 'a pass that needs gradients took the kernel'
    assert max(rel(a, b) for a, b in zip(train, plain_train)) < 1e-6


def test_cpu_false_wide_maps_and_small_batches_keep_cudnn(monkeypatch):
    x = torch.randn(1, 8, 4, 4)
    assert not fused.use_triton_conv(None, x) and not fused.use_triton_conv(True, x)
    monkeypatch.setattr(fused, 'triton_available', lambda: True)
    assert fused.use_triton_conv(True, FakeCuda(2, 256, 16, 16))
    assert fused.use_triton_conv(None, FakeCuda(32, 96, 128, 128))
    assert not fused.use_triton_conv(None, FakeCuda(2, 128, 128, 128))  # 32k pixels: cuDNN measured faster
    assert not fused.use_triton_conv(True, FakeCuda(32, 384, 32, 32))  # wider than 256 channels
    assert not fused.use_triton_conv(False, FakeCuda(32, 96, 128, 128))
    assert Block(8).fused_block is None


@NO_TRITON_ON_CPU
@pytest.mark.skipif(not fused.dwconv_ops.COMPILABLE, reason='custom ops need torch >= 2.4')
def test_compiled_block_keeps_the_custom_op_without_gradients(kernels, monkeypatch):
    block = random_block(12, seed=6).eval()
    x = torch.randn(2, 12, 5, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = block(x)
    monkeypatch.setattr(fused, 'use_triton_conv', lambda mode, t: True)
    calls = []
    real = fused.dwconv_ops.conv_norm

    def counted(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(fused.dwconv_ops, 'conv_norm', counted)
    # aot_eager: dynamo and AOT autograd as for inductor (fake tensors), no codegen
    compiled = torch.compile(block, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
    assert calls, 'the compiled block did not go through the custom op'
    assert rel(got, want) < 1e-5
