"""The fused block (convnextv2_dense.models.fused) against the plain block, on the CPU.

The autograd function is checked with its torch passes and with the Triton kernels run by Triton's
interpreter (TRITON_INTERPRET=1, set here before Triton is imported): forward and every gradient, fp32
to rounding, bf16/fp16 within 1e-2 relative of the fp32 plain block. Random non-zero weights throughout.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os

import pytest
import torch

from convnextv2_dense import ConvNeXtV2
from convnextv2_dense.models.block import Block
from convnextv2_dense.models.fused import TorchOps, gelu_grn_linear, gelu_grn_mlp, use_fused

HAS_TRITON = importlib.util.find_spec('triton') is not None
# Triton's interpreter takes CPU tensors from 3.0 on (triton 2.1, beside the floor's torch 2.1, finds no CPU backend)
TRITON_RUNS_ON_CPU = HAS_TRITON and int(importlib.metadata.version('triton').split('.')[0]) >= 3
NO_TRITON_ON_CPU = pytest.mark.skipif(not TRITON_RUNS_ON_CPU, reason='needs triton >= 3.0, whose interpreter runs '
                                      'kernels on CPU tensors')


def cpu_convolves(dtype: torch.dtype) -> bool:
    """Whether this torch has a CPU convolution in ``dtype`` (torch 2.1 has none in fp16)."""
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 3, 3, dtype=dtype))
    except RuntimeError:
        return False
    return True


def interpreted_triton_ops() -> type:
    os.environ['TRITON_INTERPRET'] = '1'  # must be set before the kernels are decorated
    module = importlib.import_module('convnextv2_dense.models.fused.triton_ops')
    return importlib.reload(module).TritonOps


def record_mlp_op_calls(monkeypatch, name: str) -> list[bool]:
    """Wrap the custom op ``fused.mlp_ops.<name>``: the list gets, per call, whether a residual was passed."""
    from convnextv2_dense.models import fused
    calls, real = [], getattr(fused.mlp_ops, name)

    def counted(*args):
        calls.append(args[7] is not None)
        return real(*args)
    monkeypatch.setattr(fused.mlp_ops, name, counted)
    return calls


def random_block(dim: int, seed: int = 0) -> Block:
    torch.manual_seed(seed)
    block = Block(dim)
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.5 if param.dim() == 1 else 0.1)
    return block


def fused_branch(block: Block, x: torch.Tensor, ops: type, form: str = 'folded') -> torch.Tensor:
    """The block through one of the fused functions (what fused_forward does on CUDA)."""
    y = block.norm(block.dwconv(x).permute(0, 2, 3, 1))
    n, hh, ww, c = y.shape
    if form == 'matmuls':  # the whole MLP and the residual in the two matmul passes
        residual = x.permute(0, 2, 3, 1).reshape(n, hh * ww, c)
        out = gelu_grn_mlp(y.reshape(n, hh * ww, c), block.pwconv1.weight, block.pwconv1.bias, block.grn.gamma,
                           block.grn.beta, block.pwconv2.weight, block.pwconv2.bias, residual, block.grn.eps, ops)
        return out.view(n, hh, ww, c).permute(0, 3, 1, 2)
    h = block.pwconv1(y)
    out = gelu_grn_linear(h.reshape(n, hh * ww, -1), block.grn.gamma, block.grn.beta, block.pwconv2.weight,
                          block.pwconv2.bias, block.grn.eps, ops, fold=form == 'folded')
    return x + out.view(n, hh, ww, -1).permute(0, 3, 1, 2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def outputs_and_grads(fn, block: Block, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_()
    y = fn(x)
    return [y.float(), *(g.float() for g in torch.autograd.grad(y, [x, *block.parameters()], grad.to(y.dtype)))]


OPS = [pytest.param('torch', id='torch-passes'),
       pytest.param('triton', id='triton-interpreted', marks=NO_TRITON_ON_CPU)]


FORMS = ['folded', 'applied', 'matmuls']


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('ops_name', OPS)
@pytest.mark.parametrize('shape', [(2, 8, 5, 7), (1, 24, 9, 9)])
def test_fp32_matches_the_plain_block(ops_name, shape, form):
    ops = TorchOps if ops_name == 'torch' else interpreted_triton_ops()
    block = random_block(shape[1])
    x = torch.randn(shape).to(memory_format=torch.channels_last)
    grad = torch.randn(shape)
    plain = outputs_and_grads(block, block, x, grad)
    fused = outputs_and_grads(lambda t: fused_branch(block, t, ops, form), block, x, grad)
    names = ['out', 'x', *(name for name, _ in block.named_parameters())]
    errors = {name: rel(a, b) for name, a, b in zip(names, fused, plain)}
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('ops_name', OPS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_is_within_1e_2_of_fp32(ops_name, dtype, form):
    if not cpu_convolves(dtype):
        pytest.skip(f'this torch has no CPU convolution in {dtype}')
    ops = TorchOps if ops_name == 'torch' else interpreted_triton_ops()
    block = random_block(16, seed=1)
    x, grad = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    reference = outputs_and_grads(block, block, x, grad)
    half = block.to(dtype)  # no CPU autocast for every op: the whole block in the half dtype
    fused = outputs_and_grads(lambda t: fused_branch(half, t.to(dtype), ops, form), half, x, grad)
    errors = [rel(a, b) for a, b in zip(fused, reference)]
    # Triton's interpreter truncates fp32 to bf16 (3.9) where a GPU rounds to nearest, which about doubles the
    # error of a kernel that rounds several times (the matmul form rounds h, gelu(h), g and the branch)
    tolerance = 2e-2 if ops_name == 'triton' and dtype == torch.bfloat16 else 1e-2
    assert max(errors) < tolerance, errors


@NO_TRITON_ON_CPU
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_kernels_equal_their_torch_reference(dtype):
    ops = interpreted_triton_ops()
    torch.manual_seed(3)
    h = (torch.randn(2, 70, 72) * 2).to(dtype)  # row and channel counts that are not block multiples
    a0, s0 = TorchOps.gelu_sumsq(h)
    a1, s1 = ops.gelu_sumsq(h)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel(a1, a0) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert rel(s1, s0) < tol
    da, r = torch.randn_like(h), torch.randn(2, 72)
    assert rel(ops.gelu_grad(h, a1, da, r), TorchOps.gelu_grad(h, a0, da, r)) < tol
    # the applied form's passes
    s, beta, dg = torch.rand(2, 72) + 0.5, torch.randn(72), torch.randn_like(h)
    assert rel(ops.sumsq_of_gelu(h), TorchOps.sumsq_of_gelu(h)) < tol
    assert rel(ops.sumsq_of_gelu(h), TorchOps.gelu_sumsq(h)[1]) < tol
    assert rel(ops.gelu_grn(h, s, beta), TorchOps.gelu_grn(h, s, beta)) < tol
    for got, want in zip(ops.grn_grad_sums(h, dg), TorchOps.grn_grad_sums(h, dg)):
        assert got.shape == (2, 72) and rel(got, want) < tol
    assert rel(ops.gelu_grn_grad(h, dg, s, r), TorchOps.gelu_grn_grad(h, dg, s, r)) < tol
    # the scaled gradient is the plain one given da = dg * s
    da = (dg.float() * s[:, None, :]).to(dtype)
    assert rel(ops.gelu_grn_grad(h, dg, s, r), ops.gelu_grad(h, torch.nn.functional.gelu(h), da, r)) < tol


@pytest.mark.parametrize('ops_name', OPS)
def test_matmul_form_without_gradients_matches_the_plain_block(ops_name):
    ops = TorchOps if ops_name == 'torch' else interpreted_triton_ops()
    block = random_block(24, seed=2)
    x = torch.randn(2, 24, 7, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():  # the first matmul writes gelu(h) instead of h
        assert rel(fused_branch(block, x, ops, 'matmuls'), block(x)) < 1e-5


@NO_TRITON_ON_CPU
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_matmul_kernels_equal_their_torch_reference(dtype):
    ops = interpreted_triton_ops()
    torch.manual_seed(4)
    y = torch.randn(3, 70, 24).to(dtype)  # rows (per image) and widths that are not block multiples
    w1, b1 = (torch.randn(96, 24) * 0.2).to(dtype), torch.randn(96)
    h1, sumsq1 = ops.linear_gelu_sumsq(y, w1, b1)
    h0, sumsq0 = TorchOps.linear_gelu_sumsq(y, w1, b1)
    # the interpreter truncates to bf16 where torch rounds (see the half-precision test)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert h1.dtype == dtype and rel(h1, h0) < tol and rel(sumsq1, sumsq0) < tol
    s, beta = torch.rand(3, 96) + 0.5, torch.randn(96)
    w2, b2 = (torch.randn(24, 96) * 0.1).to(dtype), torch.randn(24)
    for residual in (None, torch.randn(3, 70, 24), torch.randn(3, 70, 24).to(dtype)):
        out1 = ops.grn_linear(h0, s, beta, w2, b2, residual)
        out0 = TorchOps.grn_linear(h0, s, beta, w2, b2, residual)
        assert out1.dtype == out0.dtype and rel(out1, out0) < tol
    # inference: the first matmul writes gelu(h) and the second applies no GELU, to the same output
    a1, sumsq_a = ops.linear_gelu_sumsq(y, w1, b1, store_gelu=True)
    assert rel(a1, torch.nn.functional.gelu(h0)) < tol and rel(sumsq_a, sumsq0) < tol
    assert rel(ops.grn_linear(a1, s, beta, w2, b2, gelu=False), TorchOps.grn_linear(h0, s, beta, w2, b2)) < tol


@NO_TRITON_ON_CPU
def test_matmuls_time_their_tiles_once_per_shape_and_run_the_fastest(monkeypatch):
    """On a GPU each matmul times its candidate tiles on a shape's first call (here a fake clock that finds
    the second tile faster), remembers the winner, and runs it: the interpreter checks that tile's result."""
    import sys
    import triton.testing
    ops = interpreted_triton_ops()
    mlp_gemm = sys.modules['convnextv2_dense.models.fused.mlp_gemm']
    tiles = [(16, 32, 16, 4, 3), (64, 64, 32, 4, 3)]
    clock = iter([2.0, 1.0, 2.0, 1.0])
    timed = []

    def fake_bench(fn, warmup, rep):
        fn()
        timed.append(fn)
        return next(clock)
    monkeypatch.setattr(mlp_gemm, '_INTERPRETED', False)  # as on a GPU; fp32 keeps the interpreter's dot exact
    monkeypatch.setattr(mlp_gemm, '_tuned', {})
    monkeypatch.setattr(mlp_gemm, 'candidate_tiles', lambda *shape: tiles)
    monkeypatch.setattr(triton.testing, 'do_bench', fake_bench)
    torch.manual_seed(5)
    y, w1, b1 = torch.randn(3, 70, 24), torch.randn(96, 24) * 0.2, torch.randn(96)
    s, beta, w2, b2 = torch.rand(3, 96) + 0.5, torch.randn(96), torch.randn(24, 96) * 0.1, torch.randn(24)
    for _ in range(2):  # the second call finds both tiles remembered
        h1, sumsq1 = ops.linear_gelu_sumsq(y, w1, b1)
        out1 = ops.grn_linear(h1, s, beta, w2, b2)
    assert len(timed) == 4 and sorted(set(mlp_gemm._tuned.values())) == [tiles[1]]
    h0, sumsq0 = TorchOps.linear_gelu_sumsq(y, w1, b1)
    assert rel(h1, h0) < 1e-5 and rel(sumsq1, sumsq0) < 1e-5
    assert rel(out1, TorchOps.grn_linear(h0, s, beta, w2, b2)) < 1e-5


def test_tiles_are_clipped_to_the_shape_and_start_with_the_fixed_one():
    from convnextv2_dense.models.fused import mlp_gemm
    tiles = mlp_gemm.candidate_tiles(49, 384, 96)  # a 7 x 7 map of a 96-wide stage: 64-row tiles at most
    assert tiles[0] == (*mlp_gemm.gemm_config(49, 384, 96), 3) and len(set(tiles)) == len(tiles)
    assert all(bl <= 64 and bo <= 512 and br <= 128 for bl, bo, br, _, _ in tiles)
    assert (64, 128, 64, 8, 3) in tiles


@NO_TRITON_ON_CPU
@pytest.mark.skipif(not hasattr(torch.library, 'custom_op'), reason='custom ops need torch >= 2.4')
def test_compiled_inference_runs_the_mlp_as_the_custom_op(monkeypatch):
    """Under torch.compile without gradients the fused block's MLP is the custom op of the matmul form (the
    compiler keeps it whole); with gradients the compiled block stays plain."""
    from convnextv2_dense.models import block as block_module
    from convnextv2_dense.models import fused
    interpreted_triton_ops()
    block = random_block(12, seed=7).eval()
    x = torch.randn(2, 12, 5, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = block(x)
    calls = record_mlp_op_calls(monkeypatch, 'gelu_grn_mlp')
    # as on CUDA (the rule's own device and size checks are tested elsewhere)
    monkeypatch.setattr(block_module, 'use_fused', lambda mode, training, t: fused.is_compiling()
                        and not torch.is_grad_enabled())
    compiled = torch.compile(block, backend='aot_eager', fullgraph=True)  # fake tensors as for inductor
    with torch.no_grad():
        got = compiled(x)
    assert calls == [True], 'the compiled block did not run the MLP (with its residual) as the custom op'
    assert rel(got, want) < 1e-5
    torch._dynamo.reset()
    calls.clear()
    compiled(x.requires_grad_()).sum().backward()
    assert not calls and x.grad is not None


def test_mlp_rejects_bad_shapes():
    block = random_block(8)
    params = (block.pwconv1.weight, block.pwconv1.bias, block.grn.gamma, block.grn.beta, block.pwconv2.weight,
              block.pwconv2.bias)
    with pytest.raises(ValueError, match='y must be'):
        gelu_grn_mlp(torch.randn(2, 4, 4, 8), *params)
    with pytest.raises(ValueError, match='residual must be'):
        gelu_grn_mlp(torch.randn(2, 16, 8), *params, residual=torch.randn(2, 16, 4))


@pytest.mark.parametrize('in_matmuls', [False, True])
def test_fused_forward_folds_grn_only_where_worth_fusing(monkeypatch, in_matmuls):
    from convnextv2_dense.models import fused
    calls = []

    def record_linear(*args, fold, **kwargs):
        calls.append('folded' if fold else 'applied')
        return gelu_grn_linear(*args[:-1], TorchOps, fold=fold)

    def record_mlp(*args):
        calls.append('matmuls' if args[7] is None else 'matmuls+residual')
        return gelu_grn_mlp(*args[:-1], TorchOps)
    monkeypatch.setattr(fused, 'gelu_grn_linear', record_linear)
    monkeypatch.setattr(fused, 'gelu_grn_mlp', record_mlp)
    monkeypatch.setattr(fused, 'kernel_ops', lambda: TorchOps)
    monkeypatch.setattr(fused, 'MIN_BATCH_PIXELS', 64)
    monkeypatch.setattr(fused, 'APPLIED_IN_MATMULS', in_matmuls)
    block = random_block(8)
    block.drop_path.drop_prob = 0.5
    for training in (False, True):  # drop path idle, then dropping (the residual is added outside the matmuls)
        block.train(training)
        for side in (2, 8):  # 4 pixels per channel (applied), then 64 (folded)
            x = torch.randn(4, 8, side, side).to(memory_format=torch.channels_last)
            torch.manual_seed(5)
            got = fused.fused_forward(block, x)
            torch.manual_seed(5)
            assert torch.allclose(got, block(x), atol=1e-5)
    applied = ['matmuls+residual', 'matmuls'] if in_matmuls else ['applied', 'applied']
    assert calls == [applied[0], 'folded', applied[1], 'folded']


def test_cpu_runs_the_plain_block_and_compile_or_false_never_fuses():
    x = torch.randn(1, 8, 4, 4)
    assert not use_fused(None, True, x) and not use_fused(True, True, x)
    if torch.cuda.is_available():
        assert not use_fused(False, True, x.cuda())


class FakeCuda:
    """Stands for a CUDA block input: the rules read only the device and the shape."""
    is_cuda = True

    def __init__(self, *shape):
        self.shape = shape


@pytest.mark.parametrize('shape, training, grad, expected', [
    ((32, 96, 128, 128), True, True, True),  # training: where the fold pays, or from 32 images on
    ((32, 384, 32, 32), True, True, True),
    ((16, 512, 32, 32), True, True, False),
    ((2, 128, 128, 128), True, True, False),
    ((32, 96, 128, 128), False, True, False),  # eval with gradients: plain
    ((32, 96, 128, 128), False, False, True),  # inference: where the batch has 65,536 pixels or more
    ((128, 256, 28, 28), False, False, True),
    ((16, 512, 32, 32), False, False, False),
    ((2, 128, 128, 128), False, False, False),
    ((2, 128, 128, 128), True, False, False)])
def test_default_runs_fused_where_it_measured_faster(monkeypatch, shape, training, grad, expected):
    from convnextv2_dense.models import fused
    monkeypatch.setattr(fused, 'triton_available', lambda: True)
    with torch.set_grad_enabled(grad):
        assert use_fused(None, training, FakeCuda(*shape)) is expected
        assert use_fused(True, training, FakeCuda(*shape)) and not use_fused(False, training, FakeCuda(*shape))


def test_compiled_blocks_fuse_by_default_only_without_gradients(monkeypatch):
    from convnextv2_dense.models import fused
    monkeypatch.setattr(fused, 'triton_available', lambda: True)
    monkeypatch.setattr(fused, 'is_compiling', lambda: True)
    x, small = FakeCuda(32, 96, 128, 128), FakeCuda(2, 128, 128, 128)
    # training: the training op with fused_block=True only; the default compiles the plain block
    assert use_fused(True, True, x) is fused.mlp_ops.COMPILABLE and not use_fused(None, True, x)
    with torch.no_grad():
        assert use_fused(True, False, x) is fused.mlp_ops.COMPILABLE
        assert use_fused(None, False, x) is (fused.COMPILED_MLP_BY_DEFAULT and fused.mlp_ops.COMPILABLE)
        monkeypatch.setattr(fused, 'COMPILED_MLP_BY_DEFAULT', True)
        assert use_fused(None, False, x) is fused.mlp_ops.COMPILABLE
        assert not use_fused(None, False, small) and not use_fused(False, False, x)
    assert not use_fused(None, True, x) and not use_fused(False, True, x)  # the switch is for inference


def test_fused_block_keeps_parameter_names_and_rejects_bad_values():
    names = list(ConvNeXtV2('atto').state_dict())
    assert list(ConvNeXtV2('atto', fused_block=True).state_dict()) == names
    assert list(ConvNeXtV2('atto', fused_block=False).state_dict()) == names
    assert all(block.fused_block is False for stage in ConvNeXtV2('atto', fused_block=False).stages
               for block in stage)
    with pytest.raises(ValueError, match="fused_block must be None, True or False, got 'yes'"):
        ConvNeXtV2('atto', fused_block='yes')
    with pytest.raises(ValueError, match='got 1'):
        ConvNeXtV2('atto', fused_block=1)


@pytest.mark.parametrize('shape, expected', [((32, 96, 128, 128), True), ((16, 128, 128, 128), True),
                                             ((2, 128, 128, 128), False), ((16, 512, 32, 32), False),
                                             ((128, 1024, 7, 7), False)])
def test_default_fuses_only_the_shapes_where_it_measured_faster(shape, expected):
    from convnextv2_dense.models.fused import worth_fusing
    assert worth_fusing(torch.empty(shape, device='meta')) is expected


class FakeActivation:
    """Stands for a convolution output: the LayerNorm rule reads only the device and the dtype."""

    def __init__(self, is_cuda: bool, dtype: torch.dtype) -> None:
        self.is_cuda, self.dtype = is_cuda, dtype


def test_layer_norm_runs_in_bf16_only_on_cuda_bf16_outputs_of_fp32_parameters(monkeypatch):
    from convnextv2_dense.models import fused
    norm, half_norm = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8).to(torch.bfloat16)
    assert not fused.NORM_IN_BF16  # off until a GPU has timed it
    monkeypatch.setattr(fused, 'NORM_IN_BF16', True)
    assert fused.norm_in_conv_dtype(FakeActivation(True, torch.bfloat16), norm)
    assert not fused.norm_in_conv_dtype(FakeActivation(False, torch.bfloat16), norm)  # the CPU stays as it was
    assert not fused.norm_in_conv_dtype(FakeActivation(True, torch.float16), norm)  # fp16: gradients overflow
    assert not fused.norm_in_conv_dtype(FakeActivation(True, torch.float32), norm)
    assert not fused.norm_in_conv_dtype(FakeActivation(True, torch.bfloat16), half_norm)  # already bf16
    monkeypatch.setattr(fused, 'is_capturing', lambda: True)  # compile, tracing and export see the plain norm
    assert not fused.norm_in_conv_dtype(FakeActivation(True, torch.bfloat16), norm)
    monkeypatch.setattr(fused, 'is_capturing', lambda: False)
    monkeypatch.setattr(fused, 'NORM_IN_BF16', False)
    assert not fused.norm_in_conv_dtype(FakeActivation(True, torch.bfloat16), norm)


@pytest.mark.skipif(not cpu_convolves(torch.bfloat16), reason='needs a bf16 CPU convolution')
def test_block_with_the_bf16_layer_norm_matches_autocasts_fp32_norm(monkeypatch):
    """The block under bf16 autocast (the CPU standing in for CUDA): with the rule on, the LayerNorm runs in
    bf16 (no fp32 copy of its input), its parameters' gradients stay fp32, and the outputs and every gradient
    are within bf16's rounding of autocast's fp32 LayerNorm."""
    from convnextv2_dense.models import fused
    block = random_block(16, seed=3).to(memory_format=torch.channels_last)
    block.fused_block = False
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 16, 9, 9)
    norm_inputs = []
    block.norm.register_forward_pre_hook(lambda module, args: norm_inputs.append(args[0].dtype))

    def run(x):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return block(x)
    monkeypatch.setattr(fused, 'norm_in_conv_dtype', lambda y, norm: False)
    reference = outputs_and_grads(run, block, x, grad)
    assert norm_inputs == [torch.bfloat16]  # autocast's module call, which casts to fp32 inside
    calls = []
    real = fused.layer_norm_in_dtype
    monkeypatch.setattr(fused, 'norm_in_conv_dtype', lambda y, norm: y.dtype == torch.bfloat16)
    monkeypatch.setattr(fused, 'layer_norm_in_dtype', lambda y, norm: calls.append(y.dtype) or real(y, norm))
    x_ = x.detach().requires_grad_()
    y = run(x_)
    y.backward(grad.to(y.dtype))
    assert calls == [torch.bfloat16] and len(norm_inputs) == 1  # the module itself is not called
    assert block.norm.weight.grad.dtype == torch.float32 and block.norm.bias.grad.dtype == torch.float32
    block.zero_grad()
    got = outputs_and_grads(run, block, x, grad)
    assert len(got) == len(reference) == 2 + len(list(block.parameters()))
    for name, g, r in zip(['out', 'x', *(n for n, _ in block.named_parameters())], got, reference):
        assert g.dtype == r.dtype and rel(g, r) < 2e-2, (name, rel(g, r))


@NO_TRITON_ON_CPU
@pytest.mark.skipif(not hasattr(torch.library, 'register_autograd'), reason='custom ops need torch >= 2.4')
def test_compiled_training_runs_the_mlp_as_its_training_op_with_the_plain_blocks_gradients(monkeypatch):
    """Under torch.compile with gradients and fused_block=True, the MLP is the training custom op, whose registered
    backward gives the plain block's gradients (input and every parameter)."""
    from convnextv2_dense.models import block as block_module
    from convnextv2_dense.models import fused
    interpreted_triton_ops()
    block = random_block(12, seed=11).train()
    x = torch.randn(2, 12, 5, 5).to(memory_format=torch.channels_last)
    want_x = x.clone().requires_grad_()
    block(want_x).square().sum().backward()
    want = [want_x.grad] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    calls = record_mlp_op_calls(monkeypatch, 'gelu_grn_mlp_train')
    monkeypatch.setattr(block_module, 'use_fused', lambda mode, training, t: fused.is_compiling())  # as on CUDA
    compiled = torch.compile(block, backend='aot_eager', fullgraph=True)  # fake tensors as for inductor
    got_x = x.clone().requires_grad_()
    compiled(got_x).square().sum().backward()
    assert calls == [True], 'the compiled block did not run the MLP (with its residual) as the training op'
    got = [got_x.grad] + [p.grad for p in block.parameters()]
    names = ['x'] + [name for name, _ in block.named_parameters()]
    for name, g, w in zip(names, got, want):
        assert g is not None and g.dtype == w.dtype and rel(g, w) < 1e-4, name
    # under bf16 autocast: the eager matmul form's numbers (the same passes), the input gradient within 1e-2 of fp32
    monkeypatch.setattr(fused, 'APPLIED_IN_MATMULS', True)
    monkeypatch.setattr(fused, 'MIN_BATCH_PIXELS', 1)
    monkeypatch.setattr(fused, 'kernel_ops', interpreted_triton_ops)
    bf16 = []
    for run in (compiled, lambda t: fused.fused_forward(block, t)):
        block.zero_grad(set_to_none=True)
        got_x = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = run(got_x)
        out.float().square().sum().backward()
        bf16.append([got_x.grad] + [p.grad.clone() for p in block.parameters()])
    assert rel(bf16[0][0], want[0]) < 1e-2
    for name, g, e in zip(names, *bf16):
        assert rel(g, e) < 1e-3, name
    torch._dynamo.reset()


@NO_TRITON_ON_CPU
@pytest.mark.skipif(not hasattr(torch.library, 'opcheck'), reason='torch.library.opcheck needs torch >= 2.4')
@pytest.mark.parametrize('with_residual', [False, True])
def test_training_op_passes_torch_opcheck(with_residual):
    """Fake shapes and dtypes, schema, autograd registration and AOT dispatch of the training op (and, through
    its backward, the backward op), on interpreted kernels."""
    from convnextv2_dense.models import fused
    interpreted_triton_ops()
    block = random_block(8, seed=3)
    y = torch.randn(2, 9, 8, requires_grad=True)
    residual = torch.randn(2, 9, 8, requires_grad=True) if with_residual else None
    args = (y, block.pwconv1.weight, block.pwconv1.bias, block.grn.gamma, block.grn.beta, block.pwconv2.weight,
            block.pwconv2.bias, residual, block.grn.eps)
    torch.library.opcheck(fused.mlp_ops.gelu_grn_mlp_train, args)
