"""GraphedDistributedDataParallel: the graphed step in a multi-process job gives stock DDP's numbers.

Two gloo processes on the CPU, with :class:`test_graph_step.ReplayGraph` standing in for the CUDA graph
(it replays by running the recorded step again): the wrapper's warm-up, capture and replay, the gradient
averaging after backward, and the agreement between the ranks (batches of different shapes on different
ranks, a capture that fails on one rank only) are checked against mmengine's ``MMDistributedDataParallel``
on the same data. On a GPU, one NCCL process runs the real graph.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmseg')

import convnextv2_dense  # noqa: E402,F401  (registers our mmseg components)
from convnextv2_dense.mm.graph_ddp import GradientSync, signature_key  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

WORKER = r'''
import os, sys, warnings, torch, torch.distributed as dist
sys.path.insert(0, 'tests/mm')
port, rank, world, backend, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=port)
if device == 'cuda':
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
dist.init_process_group(backend, rank=rank, world_size=world)
torch.set_num_threads(1)
import test_graph_step as t
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS, init_default_scope


class Broken:
    def capture(self, body, stream=None, capture_error_mode='global'):
        raise RuntimeError('operation not permitted when stream is capturing')


def run(scenario):
    holder = {}
    if device == 'cuda':
        options = dict(warmup_iters=2)
    elif scenario == 'capture fails on rank 1' and rank == 1:
        options = dict(warmup_iters=1, require_cuda=False, graph_factory=Broken)
    else:
        options = dict(warmup_iters=1, require_cuda=False, graph_factory=lambda: t.ReplayGraph(holder['model']))
    graphed = t.build(options, device=device)
    holder['model'] = graphed
    stock = t.build(False, device=device)
    stock.load_state_dict(graphed.state_dict())
    ids = [0] if device == 'cuda' else None
    init_default_scope('mmseg')  # the Runner builds the config's wrapper from the registry, so do we
    ours = MODEL_WRAPPERS.build(dict(type='GraphedDistributedDataParallel', module=graphed, device_ids=ids,
                                     broadcast_buffers=False))
    theirs = MMDistributedDataParallel(module=stock, device_ids=ids, broadcast_buffers=False)
    batches = [t.batch(100 * rank + s) for s in range(5)]  # other data on each rank
    if scenario == 'shapes differ at step 3' and rank == 1:
        batches[2] = t.batch(7, size=96)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ours_logs = t.train(ours, t.optim(graphed), batches)
    theirs_logs = t.train(theirs, t.optim(stock), batches)
    tol = dict(rtol=1e-4, atol=1e-5) if device == 'cuda' else {}
    t.assert_same_state(graphed, stock, **tol)
    for a, b in zip(ours_logs, theirs_logs):
        for key in a:
            torch.testing.assert_close(torch.tensor(a[key]), torch.tensor(b[key]), **tol, msg=key)
    flat = torch.cat([p.detach().flatten() for p in graphed.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered), 'the ranks drifted apart'
    step = graphed.graph_step
    messages = sorted({str(w.message) for w in caught if 'CUDA graph train step' in str(w.message)})
    print(f'RESULT {scenario} | captured={step.graph is not None} | disabled={step.disabled} | {messages}',
          flush=True)


for scenario in sys.argv[6:]:
    run(scenario)
dist.destroy_process_group()
'''

SCENARIOS = ['same shapes', 'shapes differ at step 3', 'capture fails on rank 1']


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_ranks(world: int, backend: str, device: str, scenarios: list[str]) -> list[dict[str, str]]:
    """Start ``world`` worker processes; return each rank's result line per scenario."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, port, str(rank), str(world), backend, device,
                               *scenarios], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world)]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            for other in procs:
                if other.poll() is None and proc.returncode != 0:
                    other.kill()
        assert proc.returncode == 0, err[-4000:]
        outputs.append(dict(line.split(' | ', 1) for line in out.splitlines() if line.startswith('RESULT ')))
    return outputs


@pytest.mark.slow  # two processes, about a minute on a CPU
def test_two_ranks_equal_stock_ddp_and_agree_on_every_step():
    per_rank = run_ranks(2, 'gloo', 'cpu', SCENARIOS)
    for rank, results in enumerate(per_rank):
        same, differ, fails = (results[f'RESULT {s}'] for s in SCENARIOS)
        # captured after one warm-up, then replayed with the gradients averaged: stock DDP's numbers
        assert same.startswith('captured=True | disabled=None | []'), (rank, same)
        # rank 1's third batch is larger: every rank runs that step eager (the ranks hold the same
        # state machine, so capture and replay stay collective), then the graph goes on
        assert differ.startswith('captured=True | disabled=None'), (rank, differ)
        assert 'batches of different shapes' in differ, (rank, differ)
        # rank 1 cannot capture: both turn the graph off and train eagerly
        assert fails.startswith('captured=False | disabled=capture failed'), (rank, fails)
    assert 'operation not permitted' in per_rank[1]['RESULT capture fails on rank 1']
    assert 'it failed in another process' in per_rank[0]['RESULT capture fails on rank 1']


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_one_nccl_rank_replays_the_real_graph_with_stock_ddp_numbers():
    (results,) = run_ranks(1, 'nccl', 'cuda', ['same shapes'])
    assert results['RESULT same shapes'].startswith('captured=True | disabled=None'), results


def test_the_config_wrapper_is_a_ddp_subclass_for_the_runner():
    import mmseg.registry  # noqa: F401  (registration runs on its import)
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    # Runner.wrap_model: MODEL_WRAPPERS.get(type) on mmengine's root registry, whatever the default scope,
    # then issubclass(it, DistributedDataParallel) to pass device_ids
    wrapper = MODEL_WRAPPERS.get('GraphedDistributedDataParallel')
    assert isinstance(wrapper, type) and issubclass(wrapper, DistributedDataParallel)
    assert MODEL_WRAPPERS.get('MMDistributedDataParallel') in wrapper.__mro__


def test_signature_key_ignores_the_device_index_only():
    a = ((2, 3, 64, 64), torch.float32, torch.device('cuda', 0)), 2, ()
    b = ((2, 3, 64, 64), torch.float32, torch.device('cuda', 1)), 2, ()
    c = ((2, 3, 96, 64), torch.float32, torch.device('cuda', 0)), 2, ()
    d = ((2, 3, 64, 64), torch.float16, torch.device('cuda', 0)), 2, ()
    assert signature_key(a) == signature_key(b)
    assert len({signature_key(a), signature_key(c), signature_key(d)}) == 3


def test_buckets_keep_order_dtype_and_size():
    sync = GradientSync(bucket_mb=1 / 1024)  # 1 KiB buckets: 256 float32 values
    grads = [torch.zeros(100), torch.zeros(100), torch.zeros(100), torch.zeros(10, dtype=torch.float16),
             torch.zeros(1000), torch.zeros(5)]
    buckets = sync._buckets(grads)
    assert [[g.numel() for g in b] for b in buckets] == [[100, 100], [100], [10], [1000], [5]]
    flat = [g for b in buckets for g in b]
    assert len(flat) == len(grads) and all(x is y for x, y in zip(flat, grads))  # the same tensors, in order
    with pytest.raises(ValueError, match='bucket_mb must be positive'):
        GradientSync(bucket_mb=0)


def test_cpu_adaptation_keeps_the_configs_wrapper():
    from mmengine.config import Config
    from convnextv2_dense.mm.runner_cli import adapt_to_cpu
    cfg = Config.fromfile(str(REPO / 'configs/upernet_convnextv2_atto_ade20k.py'))
    cfg.launcher = 'pytorch'
    adapt_to_cpu(cfg)  # CPU modules take no device_ids; the graph step's wrapper stays
    assert cfg.model_wrapper_cfg == dict(type='GraphedDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=False, device_ids=None)
    cfg = Config(dict(launcher='pytorch', model=dict(type='EncoderDecoder')))
    adapt_to_cpu(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None)


def test_ddp_is_built_on_the_graph_steps_side_stream(monkeypatch):
    """DDP keeps each parameter's gradient accumulator, which runs on the stream current at DDP's construction:
    on the default stream, a captured backward would wait on it, which a capture forbids (every capture failed
    on an H100 until DDP was built on the graph step's side stream). The GPU test shows the capture; this
    shows the order on any machine."""
    from mmengine.model import MMDistributedDataParallel

    from convnextv2_dense.mm import graph_ddp, graph_step
    side, entered, seen = object(), [], []

    @contextmanager
    def recording_on_stream(stream):
        entered.append(stream)
        yield
        entered.append('left')

    def fake_ddp_init(self, module, **kwargs):  # stands in for DDP: records the stream context it runs in
        seen.append(list(entered))
        torch.nn.Module.__init__(self)
        self.module, self.process_group = module, None

    monkeypatch.setattr(graph_step, 'on_stream', recording_on_stream)
    monkeypatch.setattr(graph_ddp, '_graph_side_stream', lambda module: side)
    monkeypatch.setattr(MMDistributedDataParallel, '__init__', fake_ddp_init)
    monkeypatch.setattr(torch.distributed, 'get_backend', lambda group=None: 'gloo')
    wrapper = graph_ddp.graphed_ddp_class()(module=torch.nn.Linear(2, 2))
    assert seen == [[side]] and entered == [side, 'left']  # built inside the side stream's context
    assert wrapper.gradient_sync.control_group is None  # gloo: the agreements use the gradients' group


def test_the_side_stream_is_the_graph_steps_own_and_none_off_the_gpu():
    from convnextv2_dense.mm.graph_ddp import _graph_side_stream
    from convnextv2_dense.mm.graph_step import GraphedTrainStep
    module = torch.nn.Linear(2, 2)
    assert _graph_side_stream(module) is None  # no graph step
    module.graph_step = GraphedTrainStep()
    assert _graph_side_stream(module) is None  # on the CPU
    if torch.cuda.is_available():
        module.cuda()
        assert _graph_side_stream(module) is module.graph_step.side_stream(torch.device('cuda', 0))
