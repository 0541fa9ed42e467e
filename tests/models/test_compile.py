"""The ``compile`` option: training steps run compiled; eval, no-grad, tracing and export run eager unless
``inference=True``; ``DYNAMO_CACHE_SIZE_LIMIT`` is honoured; bad settings are named."""
from __future__ import annotations

import pytest
import torch

from convnextv2_dense import ConvNeXtV2
from convnextv2_dense.models import backbone as backbone_module
from convnextv2_dense.models.backbone import apply_dynamo_cache_size_limit, compile_settings

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


class CompileRecorder:
    """Stands for torch.compile: records what was compiled with which arguments, and runs it eagerly."""

    def __init__(self) -> None:
        self.built: list[dict] = []
        self.runs = 0

    def __call__(self, fn, **kwargs):
        self.built.append(kwargs)

        def compiled(*args, **kw):
            self.runs += 1
            return fn(*args, **kw)
        return compiled


@pytest.fixture
def recorder(monkeypatch):
    rec = CompileRecorder()
    monkeypatch.setattr(torch, 'compile', rec)
    return rec


def model(compile=True):  # noqa: A002 - the option's name
    torch.manual_seed(0)
    return ConvNeXtV2(**TINY, compile=compile)


def test_a_training_step_runs_compiled_and_builds_once(recorder):
    m = model(dict(mode='max-autotune'))
    x = torch.randn(1, 3, 32, 32)
    m(x)
    m(x)
    assert recorder.built == [dict(mode='max-autotune', dynamic=False)] and recorder.runs == 2


def test_eval_and_no_grad_run_eager(recorder):
    m = model()
    x = torch.randn(1, 3, 32, 32)
    m.eval()(x)
    with torch.no_grad():
        m.train()(x)
    assert recorder.built == [] and recorder.runs == 0


def test_inference_true_compiles_eval_calls_without_passing_inference_on(recorder):
    m = model(dict(inference=True, dynamic=False)).eval()
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert recorder.built == [dict(dynamic=False)] and recorder.runs == 1


def test_compile_false_never_compiles(recorder):
    model(False)(torch.randn(1, 3, 32, 32))
    assert recorder.built == []


def test_jit_trace_of_a_training_mode_model_runs_eager_and_matches():
    m = model()  # real torch.compile: tracing a compiled function would fail
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(m, x)
    assert '_compiled' not in m.__dict__
    for out, ref in zip(traced(x), m.eval()(x)):
        torch.testing.assert_close(out, ref)


def test_jit_trace_with_inference_true_still_runs_eager():
    m = model(dict(inference=True)).eval()
    torch.jit.trace(m, torch.randn(1, 3, 32, 32), check_trace=False)  # the check reruns it untraced
    assert '_compiled' not in m.__dict__


def test_inside_an_outer_torch_compile_the_backbone_is_inlined_not_compiled_again():
    m = model()
    x = torch.randn(1, 3, 32, 32)
    outer = torch.compile(m, backend='eager')
    for out, ref in zip(outer(x), model(False)(x)):
        torch.testing.assert_close(out, ref)
    assert '_compiled' not in m.__dict__


def test_a_real_compiled_training_step_matches_eager():
    m, eager = model(dict(backend='eager')), model(False)
    x = torch.randn(2, 3, 32, 32)
    for out, ref in zip(m(x), eager(x)):
        torch.testing.assert_close(out, ref)
    assert '_compiled' in m.__dict__


@pytest.mark.parametrize('bad, message', [
    ('yes', 'compile must be a bool or a dict'),
    (dict(inference='yes'), "inference must be True or False, got 'yes'"),
    (dict(mdoe='max-autotune'), "torch.compile takes no 'mdoe'; its arguments are .*mode"),
])
def test_bad_compile_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXtV2(**TINY, compile=bad)


def test_settings_split_torch_arguments_from_ours():
    assert compile_settings(False) == (None, False)
    assert compile_settings(True) == ({'dynamic': False}, False)
    assert compile_settings(dict(mode='reduce-overhead', inference=True)) == ({'mode': 'reduce-overhead',
                                                                                'dynamic': False}, True)
    assert compile_settings(dict(dynamic=None)) == ({'dynamic': None}, False)  # the user's choice stays
    # dynamic=False by default: at a model's second input size, dynamo's automatic dynamic shapes would build a
    # dynamic-shape graph, which torch 2.13's inductor fails to compile for this model ("cannot determine
    # truth value of Relational"); seen on the CPU, too slow (minutes) for a test here.


def test_dynamo_cache_size_limit_is_taken_from_the_environment_when_compiling(recorder, monkeypatch):
    import torch._dynamo
    before = torch._dynamo.config.cache_size_limit  # restored by hand: dynamo's config module is no plain module
    monkeypatch.setenv('DYNAMO_CACHE_SIZE_LIMIT', str(before + 3))
    try:
        model().eval()(torch.randn(1, 3, 32, 32))
        assert torch._dynamo.config.cache_size_limit == before  # eager: nothing compiled, nothing set
        model()(torch.randn(1, 3, 32, 32))
        assert torch._dynamo.config.cache_size_limit == before + 3
    finally:
        torch._dynamo.config.cache_size_limit = before


def test_without_the_variable_torchs_limit_stays(monkeypatch):
    monkeypatch.delenv('DYNAMO_CACHE_SIZE_LIMIT', raising=False)
    assert apply_dynamo_cache_size_limit() is None


def test_a_bad_cache_size_limit_is_named(monkeypatch):
    monkeypatch.setenv('DYNAMO_CACHE_SIZE_LIMIT', 'lots')
    with pytest.raises(ValueError, match="DYNAMO_CACHE_SIZE_LIMIT must be a non-negative integer, got 'lots'"):
        backbone_module.apply_dynamo_cache_size_limit()

