"""bench.timing.measure: the collector is frozen during the timed steps, its time is reported, and unfrozen."""
from __future__ import annotations

import gc

import pytest
import torch

from convnextv2_dense.bench.timing import measure


def test_measure_freezes_the_collector_times_its_passes_and_unfreezes():
    frozen_during = []

    def step() -> None:
        frozen_during.append(gc.get_freeze_count())
        for _ in range(2000):  # reference cycles: the collector must run during the timed steps
            cycle: list = []
            cycle.append(cycle)

    assert gc.get_freeze_count() == 0
    result = measure(step, warmup=1, iters=3, device=torch.device('cpu'))
    assert gc.get_freeze_count() == 0  # the rest of the process collects as usual
    assert min(frozen_during) > 1000  # the objects alive before the first step were frozen
    assert result['gc_ms'] > 0 and result['ms_max'] >= result['ms_median'] > 0


def test_measure_unfreezes_when_a_step_fails():
    def step() -> None:
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        measure(step, warmup=1, iters=1, device=torch.device('cpu'))
    assert gc.get_freeze_count() == 0
