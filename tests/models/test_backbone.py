"""The backbone contract: archs, shapes, strides, channels, memory format, freezing, checkpointing."""
import pytest
import torch

from convnextv2_dense import ARCHS, ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.models import GRN, resolve_arch

SMALL_ARCHS = ['atto', 'femto', 'pico', 'nano', 'tiny', 'base']


@pytest.mark.parametrize('arch', SMALL_ARCHS)
@pytest.mark.parametrize('size', [(64, 64), (97, 131)])
def test_output_shapes_match_out_channels_and_strides(arch, size):
    model = ConvNeXtV2(arch, out_features=['stem', 'stage1', 'stage2', 'stage3', 'stage4']).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 5
    for out, channels, stride in zip(outs, model.out_channels, model.strides):
        # convs with kernel == stride and no padding: each side is floor(size / stride)
        assert tuple(out.shape[1:]) == (channels, size[0] // stride, size[1] // stride)
    assert model.out_channels == (ARCHS[arch].dims[0], *ARCHS[arch].dims)
    assert model.strides == (4, 4, 8, 16, 32)


@pytest.mark.parametrize('arch', ['large', pytest.param('huge', marks=pytest.mark.slow)])
def test_large_archs_build_with_the_right_widths(arch):
    model = ConvNeXtV2(arch)
    assert model.out_channels == ARCHS[arch].dims
    assert [len(s) for s in model.stages] == list(ARCHS[arch].depths)


def test_default_selection_is_four_nchw_maps():
    model = ConvNeXtV2('tiny').eval()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [o.shape for o in outs] == [(2, 96, 16, 24), (2, 192, 8, 12), (2, 384, 4, 6), (2, 768, 2, 3)]
    assert model.out_indices == (0, 1, 2, 3) and model.strides == (4, 8, 16, 32)
    assert model.stage_names == ('stem', 'stage1', 'stage2', 'stage3', 'stage4')


def test_a_fresh_layer_norm_per_selected_output():
    model = ConvNeXtV2('atto', out_indices=(1, 3))
    assert sorted(model.out_norms) == ['stage2', 'stage4']
    assert model.out_norms['stage2'].normalized_shape == (80,)


def test_stem_has_no_openmmlab_index():
    model = ConvNeXtV2('atto', out_features=['stem', 'stage4'])
    assert model.out_indices == (None, 3)


def test_explicit_depths_and_dims():
    model = ConvNeXtV2(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64)).eval()
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [8, 16, 32, 64]
    assert model.arch is None


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ValueError, match='known archs: atto, femto, pico, nano, tiny, base, large, huge'):
        ConvNeXtV2('small')


@pytest.mark.parametrize('kwargs', [dict(depths=(1, 1, 1)), dict(depths=(1, 1, 1, 1), dims=(8, 8, 8)),
                                    dict(arch='tiny', depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))])
def test_bad_depths_and_dims_are_refused(kwargs):
    with pytest.raises(ValueError):
        resolve_arch(**kwargs)


def test_in_channels():
    model = ConvNeXtV2('atto', in_channels=1, out_indices=(0,))
    assert model(torch.randn(1, 1, 32, 32))[0].shape == (1, 40, 8, 8)


def test_channels_last_inputs_stay_channels_last():
    model = ConvNeXtV2('atto').eval()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = model(x)
        reference = model(x.contiguous())
    for out, ref in zip(outs, reference):
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_nchw_inputs_give_contiguous_nchw_outputs():
    # The trunk runs channels-last inside; ops that index raw NCHW memory (mmcv's RoIAlign) need this.
    model = ConvNeXtV2('atto')
    outs = model(torch.randn(2, 3, 64, 64))
    assert all(out.is_contiguous() for out in outs)


def test_drop_path_grows_linearly_over_depth():
    model = ConvNeXtV2('atto', drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == pytest.approx(torch.linspace(0, 0.3, 12).tolist())


def test_drop_path_only_acts_in_training():
    model = ConvNeXtV2('atto', drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model(x), model(x)))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, model(x)))


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages_freeze_stem_stages_and_their_norms(frozen_stages):
    model = ConvNeXtV2('atto', out_features=['stem', 'stage1', 'stage2', 'stage3', 'stage4'],
                       frozen_stages=frozen_stages, drop_path_rate=0.1)
    model.train()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    expect = set()
    if frozen_stages >= 0:
        expect |= {n for n, _ in model.named_parameters()
                   if n.startswith(('downsample_layers.0.', 'out_norms.stem.'))}
    for k in range(1, frozen_stages + 1):
        prefixes = (f'stages.{k - 1}.', f'out_norms.stage{k}.') + ((f'downsample_layers.{k - 1}.',) if k > 1 else ())
        expect |= {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert frozen == expect
    for k in range(1, frozen_stages + 1):
        assert not model.stages[k - 1].training  # stays in eval after train()
    if frozen_stages < 4:
        assert model.stages[3].training


def test_frozen_stages_out_of_range():
    with pytest.raises(ValueError, match='frozen_stages'):
        ConvNeXtV2('atto', frozen_stages=5)


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ConvNeXtV2('atto')
    checkpointed = ConvNeXtV2('atto', with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.1)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fresh_grn_is_zero_and_an_identity():
    grn = GRN(8)
    x = torch.randn(2, 4, 4, 8)
    assert torch.equal(grn(x), x)
    assert not grn.gamma.any() and not grn.beta.any()


def test_grn_formula_on_random_weights():
    grn = GRN(8)
    torch.nn.init.normal_(grn.gamma)
    torch.nn.init.normal_(grn.beta)
    x = torch.randn(2, 5, 3, 8)
    gx = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.gamma * (x * nx) + grn.beta + x)


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_grn_gradients_equal_a_float64_reference(dtype, tol, monkeypatch):
    """GRN's written-out backward (GRNFunction) against float64 autograd of the formula, random non-zero
    gamma and beta, with one all-zero channel (its norm is 0: the norm's gradient there is 0)."""
    from convnextv2_dense.models import layers
    monkeypatch.setattr(layers, 'MIN_PIXELS_WRITTEN_OUT', 60)  # this batch's pixels: GRN takes the function
    torch.manual_seed(3)
    grn = GRN(16)
    torch.nn.init.normal_(grn.gamma)
    torch.nn.init.normal_(grn.beta)
    x = torch.randn(3, 5, 4, 16)
    x[1, :, :, 7] = 0
    x = x.to(dtype).requires_grad_()
    dout = torch.randn(3, 5, 4, 16).to(dtype)
    got = torch.autograd.grad(grn(x), [x, grn.gamma, grn.beta], dout)
    x64 = x.detach().double().requires_grad_()
    gamma, beta = (p.detach().double().requires_grad_() for p in (grn.gamma, grn.beta))
    gx = torch.linalg.vector_norm(x64, dim=(1, 2), keepdim=True)  # its gradient at a zero norm is 0, sqrt's nan
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    want = torch.autograd.grad(gamma * (x64 * nx) + beta + x64, [x64, gamma, beta], dout.double())
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and ((a.double() - b).norm() / b.norm()).item() < tol
    assert got[0].dtype == dtype and got[1].dtype == got[2].dtype == torch.float32


def test_grn_second_order_gradients_equal_the_plain_ops():
    """A gradient penalty through GRN (create_graph=True) differentiates the written-out backward."""
    from convnextv2_dense.models import layers
    torch.manual_seed(4)
    grn = GRN(8)
    torch.nn.init.normal_(grn.gamma)
    torch.nn.init.normal_(grn.beta)
    x = torch.randn(2, 3, 4, 8, requires_grad=True)
    weights = torch.randn(2, 3, 4, 8)
    results = []
    for function in (layers.GRNFunction.apply, layers.grn):
        (dx,) = torch.autograd.grad((function(x, grn.gamma, grn.beta, grn.eps) * weights).sum(), x,
                                    create_graph=True)
        results.append(torch.autograd.grad(dx.square().sum(), [x, grn.gamma]))  # beta does not reach dx
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert results[0][1].abs().sum() > 0


def test_grn_backward_runs_only_with_gradients_on_large_batches_outside_compile(monkeypatch):
    from convnextv2_dense.models import layers
    monkeypatch.setattr(layers, 'MIN_PIXELS_WRITTEN_OUT', 18)
    calls = []
    real = layers.GRNFunction.apply
    monkeypatch.setattr(layers.GRNFunction, 'apply', lambda *args: calls.append(1) or real(*args))
    grn = GRN(8)
    torch.nn.init.normal_(grn.gamma)
    x = torch.randn(2, 3, 3, 8)
    with torch.no_grad():
        plain = grn(x)
    assert not calls
    assert torch.equal(grn(x), plain) and calls == [1]
    grn(x[:1])  # 9 pixels: autograd's backward through the plain ops
    assert calls == [1]
    calls.clear()
    compiled = torch.compile(grn, backend='aot_eager', fullgraph=True)
    compiled(x.requires_grad_()).sum().backward()  # the compiler sees the plain ops (and differentiates them)
    assert not calls and x.grad is not None


def test_grn_stays_finite_in_half_precision():
    grn = GRN(4).half()
    x = torch.full((1, 64, 64, 4), 300.0, dtype=torch.float16)  # squared sum overflows fp16
    assert torch.isfinite(grn(x)).all()


PAPER_PARAMS_M = dict(atto=3.7, femto=5.2, pico=9.1, nano=15.6, tiny=28.6, base=89, large=198, huge=660)


@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a == 'huge' else a for a in ARCHS])
def test_classifier_parameter_counts_equal_the_paper(arch):
    model = ConvNeXtV2Classifier(arch, num_classes=1000)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    digits = 1 if PAPER_PARAMS_M[arch] < 50 else 0  # the table's own precision
    assert round(count, digits) == PAPER_PARAMS_M[arch], count


def test_classifier_logits_shape_and_bad_num_classes():
    model = ConvNeXtV2Classifier('atto', num_classes=7).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(ValueError, match='num_classes'):
        ConvNeXtV2Classifier('atto', num_classes=0)


def test_compile_gives_the_same_features_and_gradients():
    torch.manual_seed(0)
    compiled = ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), compile=True)
    for p in compiled.parameters():
        torch.nn.init.normal_(p, std=0.2)
    eager = ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    eager.load_state_dict(compiled.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for out, ref in zip(compiled(x), eager(x)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    sum(o.square().mean() for o in compiled(x)).backward()
    sum(o.square().mean() for o in eager(x)).backward()
    torch.testing.assert_close(compiled.stages[0][0].grn.gamma.grad, eager.stages[0][0].grn.gamma.grad,
                               rtol=1e-4, atol=1e-6)


def test_compile_must_be_bool_or_dict():
    with pytest.raises(ValueError, match='compile must be a bool or a dict'):
        ConvNeXtV2('atto', compile='yes')


# ------------------------------------------------------------------------- HF's knobs, any stage count
@pytest.mark.parametrize('depths, dims, patch_size', [((1, 1, 1), (8, 16, 24), 4), ((1,) * 5, (8,) * 5, 2),
                                                      ((2,), (8,), 3)])
def test_any_number_of_stages_and_patch_size(depths, dims, patch_size):
    model = ConvNeXtV2(depths=depths, dims=dims, patch_size=patch_size, out_features=['stem', f'stage{len(depths)}'])
    size = (patch_size * 2 ** (len(depths) - 1) * 3 + 1, patch_size * 2 ** (len(depths) - 1) * 2 + 1)
    outs = model(torch.randn(1, 3, *size))
    assert model.stage_names == ('stem', *(f'stage{i + 1}' for i in range(len(depths))))
    assert model.strides == (patch_size, patch_size * 2 ** (len(depths) - 1))
    for out, channels, stride in zip(outs, model.out_channels, model.strides, strict=True):
        assert tuple(out.shape[1:]) == (channels, size[0] // stride, size[1] // stride)


def test_stages_after_the_last_selected_are_not_built():
    model = ConvNeXtV2('atto', out_indices=(0, 2))
    assert len(model.stages) == 3 and len(model.downsample_layers) == 3
    assert model.arch == 'atto' and model.depths == (2, 2, 6, 2)  # the arch stays the whole arch
    stem_only = ConvNeXtV2('atto', out_features=['stem'], frozen_stages=4)
    assert len(stem_only.stages) == 0 and not any(p.requires_grad for p in stem_only.parameters())


@pytest.mark.parametrize('kwargs, match', [
    (dict(act='gelu_10'), "unsupported activation \\(hidden_act\\) 'gelu_10'; supported: gelu, .*, relu"),
    (dict(patch_size=0), 'patch_size must be a positive integer, got 0'),
    (dict(in_channels=True), 'in_channels must be a positive integer, got True'),
    (dict(init_std=0), 'init_std must be a positive number, got 0'),
    (dict(depths=(1, 1, 1), dims=(8, 16)), 'one entry per stage'),
    (dict(depths=(), dims=()), 'non-empty tuple of positive integers'),
])
def test_bad_knobs_are_named_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXtV2(**kwargs)


def test_activation_is_used_in_every_block():
    model = ConvNeXtV2(depths=(1, 2), dims=(8, 16), act='relu')
    assert {type(b.act) for stage in model.stages for b in stage} == {torch.nn.ReLU}
