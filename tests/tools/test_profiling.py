"""The profile's host-synchronisation count: warnings of torch's sync debug mode, counted by calling line."""
from __future__ import annotations

import warnings

import torch

from convnextv2_dense.bench import profiling
from convnextv2_dense.bench.profiling import SYNC_WARNING, count_sync_warnings, format_profile, sync_sites


def _sync(times: int) -> None:
    for _ in range(times):
        warnings.warn(SYNC_WARNING, UserWarning)  # what torch warns at the line that synchronised


def _other_warning() -> None:
    warnings.warn('something else', UserWarning)


def test_sync_warnings_are_counted_per_line_most_first():
    def step() -> None:
        _sync(3)
        _other_warning()
        _sync(1)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the caller's filters are restored and do not hide the count
        sites = count_sync_warnings(step)
    sync_line = _sync.__code__.co_firstlineno + 2
    here = profiling._site_path(__file__, profiling._import_roots())  # this file, from its import root
    assert sites == [[f'{here}:{sync_line}', 4]]


def test_lines_beyond_the_top_are_summed_as_other(monkeypatch):
    monkeypatch.setattr(profiling, 'TOP', 2)
    source = f'warnings.warn({SYNC_WARNING!r})\n' * 2 + f'for _ in range(3): warnings.warn({SYNC_WARNING!r})\n'
    code = compile(source, '/opt/venv/lib/python3.12/site-packages/mmdet/fake.py', 'exec')
    sites = count_sync_warnings(lambda: exec(code, {'warnings': warnings}))
    # three lines: the busiest first, then by name; the third summed (the install prefix left out)
    assert sites == [['mmdet/fake.py:3', 3], ['mmdet/fake.py:1', 1], ['other', 1]]


def test_a_sync_inside_torch_counts_at_its_caller():
    # torch.unique called from mmdet's sampler: the warning points into torch, the count goes to the sampler
    inner = compile(f'def unique():\n    warnings.warn({SYNC_WARNING!r})\n',
                    '/opt/venv/lib/python3.12/site-packages/torch/functional.py', 'exec')
    namespace = {'warnings': warnings}
    exec(inner, namespace)
    outer = compile('unique()\nunique()\n', '/opt/venv/lib/python3.12/site-packages/mmdet/sampler.py', 'exec')
    assert count_sync_warnings(lambda: exec(outer, namespace)) == [['mmdet/sampler.py:1', 1],
                                                                    ['mmdet/sampler.py:2', 1]]


def test_off_cuda_there_is_no_sync_count_and_the_table_is_left_out():
    assert sync_sites(lambda: None, torch.device('cpu')) is None
    prof = dict(iters=1, wall_ms=10.0, gpu_busy_ms=None, device_events=None, launches=None, top_kernels=[],
                top_host_ops=[['aten::mm', 1.0, 2]], sync_sites=None)
    assert not any('synchronisations' in line for line in format_profile('x', prof))
    prof['sync_sites'] = [['mmdet/models/a.py:10', 7], ['other', 2]]
    text = '\n'.join(format_profile('x', prof))
    assert 'host synchronisations of one step: 9, by calling line' in text
    assert '| `mmdet/models/a.py:10` | 7 |' in text and '| `other` | 2 |' in text
