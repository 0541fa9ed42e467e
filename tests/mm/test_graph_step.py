"""GraphedEncoderDecoder / GraphedTrainStep: the graphed training step gives the eager step's numbers.

On the CPU the graph is :class:`ReplayGraph`, which replays by running the recorded step again and writing
into the tensors the capture produced (what a CUDA graph replay does): this checks the step's plumbing
(static inputs and labels, gradients handed back, optimizer and logs). The CUDA tests run the real graph.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip('mmseg')

import convnextv2_dense  # noqa: E402,F401  (registers our mmseg components)
from convnextv2_dense.mm.graph_step import GraphedTrainStep, batch_signature  # noqa: E402

NUM_CLASSES = 5
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


class ReplayGraph:
    """A CPU stand-in for a CUDA graph of ``model``'s step: capture changes no state (a CUDA capture runs
    nothing: BN statistics keep their values), replay re-runs the body into the captured tensors."""

    def __init__(self, model) -> None:
        self.model, self.params = model, list(model.parameters())

    def capture(self, body, stream=None, capture_error_mode='global'):
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        self.body = body
        self.outputs = body()
        self.grads = {p: p.grad for p in self.params if p.grad is not None}
        for buffer, saved in buffers:
            buffer.copy_(saved)
        return self.outputs

    def replay(self) -> None:
        for p in self.params:
            p.grad = None
        outputs = self.body()
        for p, static in self.grads.items():
            static.copy_(p.grad)
            p.grad = static
        for name, value in outputs.items():
            self.outputs[name].copy_(value)


def model_cfg(cuda_graph) -> dict:
    norm = dict(type='BN', requires_grad=True)
    ce = dict(type='CrossEntropyLoss', use_sigmoid=False)
    return dict(
        type='GraphedEncoderDecoder', cuda_graph=cuda_graph,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 64)),
        backbone=dict(type='ConvNeXtV2', arch='atto', out_indices=(0, 1, 2, 3), drop_path_rate=0.0),
        decode_head=dict(type='UPerHeadFast', in_channels=[40, 80, 160, 320], in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=16, dropout_ratio=0.0, num_classes=NUM_CLASSES,
                         norm_cfg=norm, align_corners=False, loss_decode=dict(ce, loss_weight=1.0)),
        auxiliary_head=dict(type='FCNHeadFast', in_channels=160, in_index=2, channels=8, num_convs=1,
                            concat_input=False, dropout_ratio=0.0, num_classes=NUM_CLASSES, norm_cfg=norm,
                            align_corners=False, loss_decode=dict(ce, loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def build(cuda_graph, device='cpu', seed=0):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg(cuda_graph))
    with torch.no_grad():  # random, non-zero everywhere (GRN included)
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.to(device).train()


def batch(seed: int, size: int = 64, n: int = 2) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        label = torch.randint(0, NUM_CLASSES, (1, size, size), generator=gen)
        label[:, :4] = 255
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


def optim(model, kind='sgd'):
    from mmengine.optim import build_optim_wrapper
    if kind == 'sgd':
        cfg = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
    else:
        cfg = dict(type='AmpOptimWrapper', dtype='bfloat16',
                   optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, fused=True))
    return build_optim_wrapper(model, cfg)


def train(model, optim_wrapper, batches):
    return [{k: float(v.detach()) for k, v in model.train_step(b, optim_wrapper).items()} for b in batches]


def assert_same_state(a, b, rtol=1e-5, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=atol, msg=key)


def replay_model(warmup_iters=1, **kwargs):
    holder = {}
    model = build(dict(warmup_iters=warmup_iters, require_cuda=False,
                       graph_factory=lambda: ReplayGraph(holder['model']), **kwargs))
    holder['model'] = model
    return model


def test_graphed_segmentor_is_an_encoder_decoder_with_the_same_parameters():
    from mmseg.models.segmentors import EncoderDecoder
    graphed, stock = build(True), build(False)
    assert isinstance(graphed, EncoderDecoder) and stock.graph_step is None
    assert graphed.state_dict().keys() == stock.state_dict().keys()


def test_cpu_training_is_the_stock_step():
    from mmseg.registry import MODELS
    graphed = build(True)
    cfg = model_cfg(True)
    cfg.pop('cuda_graph')
    stock = MODELS.build(dict(cfg, type='EncoderDecoder'))
    stock.load_state_dict(graphed.state_dict())
    stock.train()
    batches = [batch(s) for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no "running the eager step" warning on the CPU
        logs = train(graphed, optim(graphed), batches)
    assert logs == train(stock, optim(stock), batches)
    assert_same_state(graphed, stock, rtol=0, atol=0)
    assert graphed.graph_step.graph is None


def test_replayed_step_equals_eager_over_changing_batches():
    graphed = replay_model(warmup_iters=2)
    eager = build(False)
    eager.load_state_dict(graphed.state_dict())
    batches = [batch(s) for s in range(6)]
    graph_logs = train(graphed, optim(graphed), batches)
    eager_logs = train(eager, optim(eager), batches)
    assert graphed.graph_step.graph is not None  # captured at the third batch, replayed for the rest
    assert len({log['decode.loss_ce'] for log in graph_logs}) == 6  # new data reached the static inputs
    for g, e in zip(graph_logs, eager_logs):
        assert g.keys() == e.keys()
        for key in g:
            assert g[key] == pytest.approx(e[key], rel=1e-5, abs=1e-6), key
    assert_same_state(graphed, eager)


def test_new_batch_shape_warms_up_and_captures_again():
    graphed = replay_model(warmup_iters=1)
    opt = optim(graphed)
    train(graphed, opt, [batch(0), batch(1)])
    first = graphed.graph_step.graph
    assert first is not None
    train(graphed, opt, [batch(2, size=96)])  # another signature: eager warm-up, no graph yet
    assert graphed.graph_step.graph is None
    train(graphed, opt, [batch(3, size=96)])
    assert graphed.graph_step.graph is not None and graphed.graph_step.graph is not first


def test_failed_capture_turns_the_graph_off_with_a_warning():
    class Broken:
        def capture(self, body, stream=None, capture_error_mode='global'):
            raise RuntimeError('operation not permitted when stream is capturing')

    graphed = build(dict(warmup_iters=1, require_cuda=False, graph_factory=Broken))
    eager = build(False)
    eager.load_state_dict(graphed.state_dict())
    batches = [batch(s) for s in range(3)]
    with pytest.warns(UserWarning, match='capture failed .*operation not permitted'):
        logs = train(graphed, optim(graphed), batches)
    assert graphed.graph_step.disabled.startswith('capture failed')
    assert logs == train(eager, optim(eager), batches)
    assert_same_state(graphed, eager, rtol=0, atol=0)


def test_gradient_accumulation_runs_eager_with_a_warning():
    from mmengine.optim import build_optim_wrapper
    graphed = replay_model(warmup_iters=1)
    opt = build_optim_wrapper(graphed, dict(type='OptimWrapper', accumulative_counts=2,
                                            optimizer=dict(type='SGD', lr=0.01)))
    with pytest.warns(UserWarning, match='gradient accumulation'):
        train(graphed, opt, [batch(0), batch(1)])
    assert graphed.graph_step.graph is None


def test_options_are_checked_and_copies_start_fresh():
    with pytest.raises(ValueError, match='warmup_iters must be at least 1'):
        GraphedTrainStep(warmup_iters=0)
    with pytest.raises(TypeError, match='cuda_graph must be a bool or a dict'):
        build('yes')
    graphed = replay_model(warmup_iters=1)
    train(graphed, optim(graphed), [batch(0), batch(1)])
    twin = copy.deepcopy(graphed)
    assert twin.graph_step is not graphed.graph_step and twin.graph_step.graph is None


def test_batch_signature_covers_inputs_and_labels():
    a = dict(inputs=torch.zeros(2, 3, 8, 8), data_samples=batch(0, size=8)['data_samples'])
    b = dict(inputs=torch.zeros(2, 3, 8, 8), data_samples=batch(1, size=16)['data_samples'])
    assert batch_signature(a) != batch_signature(b)
    assert batch_signature(a) == batch_signature(dict(a, inputs=torch.ones(2, 3, 8, 8)))
    with pytest.raises(TypeError, match='one tensor'):
        batch_signature(dict(inputs=[torch.zeros(3, 8, 8)]))


@cuda
def test_cuda_graph_step_equals_eager_on_the_gpu():
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    graphed = build(dict(warmup_iters=2), device='cuda')
    eager = build(False, device='cuda')
    eager.load_state_dict(graphed.state_dict())
    batches = [batch(s) for s in range(7)]
    graph_logs = train(graphed, optim(graphed), batches)
    eager_logs = train(eager, optim(eager), batches)
    assert graphed.graph_step.graph is not None and graphed.graph_step.disabled is None
    for g, e in zip(graph_logs, eager_logs):
        for key in g:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), key
    assert_same_state(graphed, eager, rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_graph_step_with_bf16_amp_and_fused_adamw():
    graphed = build(dict(warmup_iters=2), device='cuda')
    eager = build(False, device='cuda')
    eager.load_state_dict(graphed.state_dict())
    batches = [batch(s % 2) for s in range(12)]
    graph_logs = train(graphed, optim(graphed, 'adamw'), batches)
    eager_logs = train(eager, optim(eager, 'adamw'), batches)
    assert graphed.graph_step.graph is not None and graphed.graph_step.disabled is None
    assert graph_logs[-1]['loss'] < graph_logs[0]['loss']  # it learns
    for g, e in zip(graph_logs, eager_logs):  # bf16: same trajectory within rounding
        assert g['loss'] == pytest.approx(e['loss'], rel=2e-2), (g, e)


@cuda
def test_warm_ups_and_capture_share_one_side_stream(monkeypatch):
    # a new stream per warm-up left each one's cached blocks unusable to the next: 12.7 GiB reserved
    # against 5.5 eager for UperNet-B on an H100 (docs/benchmarks.md)
    from convnextv2_dense.mm import graph_step
    streams = []
    on_stream, capture = graph_step.on_stream, graph_step.CudaGraph.capture

    def recording_on_stream(side):
        streams.append(side)
        return on_stream(side)

    def recording_capture(self, body, stream=None, capture_error_mode='global'):
        streams.append(stream)
        return capture(self, body, stream, capture_error_mode)
    monkeypatch.setattr(graph_step, 'on_stream', recording_on_stream)
    monkeypatch.setattr(graph_step.CudaGraph, 'capture', recording_capture)
    graphed = build(dict(warmup_iters=3), device='cuda')
    train(graphed, optim(graphed), [batch(s) for s in range(5)])
    assert graphed.graph_step.graph is not None and len(streams) == 4  # three warm-ups, one capture
    assert streams[0] is not None and streams[0] != torch.cuda.current_stream()
    assert all(s is streams[0] for s in streams)


def test_a_failed_capture_releases_the_random_generator(monkeypatch):
    # After a failed capture the CUDA generator stays marked as capturing and the next eager dropout stops
    # ("Offset increment outside graph capture", H100, 2026-12-06): CudaGraph.capture clears the mark.
    from contextlib import nullcontext

    from convnextv2_dense.mm import graph_step
    released = []
    monkeypatch.setattr(graph_step.torch.cuda, 'CUDAGraph', lambda: 'graph')
    monkeypatch.setattr(graph_step.torch.cuda, 'graph', lambda *args, **kwargs: nullcontext())
    monkeypatch.setattr(graph_step, 'release_rng_from_failed_capture', lambda stream=None: released.append(stream))

    def failing_body():
        raise RuntimeError('operation not permitted when stream is capturing')
    with pytest.raises(RuntimeError, match='not permitted'):
        graph_step.CudaGraph().capture(failing_body, stream='side')
    assert released == ['side']
    assert graph_step.CudaGraph().capture(lambda: 7, stream='side') == 7 and released == ['side']


@cuda
def test_eager_dropout_works_after_a_capture_that_failed():
    from convnextv2_dense.mm.graph_step import CudaGraph
    drop = torch.nn.Dropout(0.5)
    x = torch.ones(1000, device='cuda')
    drop(x)
    side = torch.cuda.Stream()
    with pytest.raises(Exception):
        CudaGraph().capture(lambda: drop(x).sum().item(), stream=side)  # a host sync: the capture fails
    assert 0 < drop(x).sum().item() < 2000  # eager dropout draws again
    graph = CudaGraph()
    out = graph.capture(lambda: drop(x) * 1, stream=side)  # and a later capture records and replays
    graph.replay()
    torch.cuda.synchronize()
    assert 0 < out.sum().item() < 2000


def test_the_graph_keeps_the_preprocessors_tensors_and_copies_the_callers():
    from convnextv2_dense.mm.graph_step import _sample_tensors
    graphed = replay_model(warmup_iters=1)
    made = []
    preprocess = graphed.data_preprocessor.forward
    graphed.data_preprocessor.forward = lambda data, training=False: made.append(preprocess(data, training)) or made[-1]
    batches = [batch(s) for s in range(4)]
    captured = [s.gt_sem_seg.data.clone() for s in batches[1]['data_samples']]
    train(graphed, optim(graphed), batches)
    step = graphed.graph_step
    assert step._inputs is made[1]['inputs']  # normalised and stacked by the preprocessor: kept, not copied
    # on the CPU the preprocessor passes the labels through (the caller's own tensors): the graph holds copies,
    # so the later batches copied into them leave the caller's batch as it was
    static = list(_sample_tensors(step._samples))
    assert not any(t is s.gt_sem_seg.data for t in static for s in batches[1]['data_samples'])
    for sample, before in zip(batches[1]['data_samples'], captured):
        assert torch.equal(sample.gt_sem_seg.data, before)
    assert all(torch.equal(t, s.gt_sem_seg.data) for t, s in zip(static, batches[3]['data_samples']))
