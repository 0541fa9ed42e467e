"""dev/graph_memory.py's --owners: what an allocator history leaves live at its peak, by first line outside torch."""
from __future__ import annotations

from suite_support import import_tool


def load_probe():
    return import_tool('graph_memory', folder='dev')


def frames(*names):
    return [dict(filename=name, line=line, name='f') for line, name in enumerate(names, 1)]


def test_owners_are_the_allocations_live_at_the_peak(capsys):
    probe = load_probe()
    head = frames('/x/torch/nn/functional.py', '/repo/pkg/mm/head.py')
    block = frames('/repo/pkg/models/block.py')
    trace = [dict(action='alloc', addr=1, size=4 << 20, frames=head),
             dict(action='alloc', addr=2, size=8 << 20, frames=block),
             dict(action='free_requested', addr=1, size=4 << 20, frames=head),
             dict(action='alloc', addr=3, size=16 << 20, frames=block),  # the peak: 2 and 3 live (24 MiB)
             dict(action='free_requested', addr=3, size=16 << 20, frames=block),
             dict(action='alloc', addr=4, size=2 << 20, frames=head)]
    probe.print_owners('ours', 3, dict(device_traces=[trace]), before=1 << 30, top=5)
    out = capsys.readouterr().out
    assert 'peak 1.023 GiB = 1.000 live before the step + 0.023 allocated in it' in out
    assert '24.0 MiB  pkg/models/block.py:1 f' in out and 'head.py' not in out


def test_the_caller_skips_torch_frames():
    probe = load_probe()
    assert probe.caller(frames('/x/torch/autograd/graph.py', '/repo/pkg/mm/head.py')) == 'pkg/mm/head.py:2 f'
    assert probe.caller(frames('/x/torch/cuda/graphs.py')) == 'torch (no outer frame)'
