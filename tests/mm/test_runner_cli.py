"""The training CLI's start-up: objects alive before training are frozen out of the garbage collector's passes."""
from __future__ import annotations

import gc
import logging

import pytest

pytest.importorskip('mmengine')


class FakeRunner:
    def __init__(self) -> None:
        self.logger = logging.getLogger('test_runner_cli')


def test_freeze_startup_objects_freezes_what_is_alive_and_logs_it(caplog):
    from convnextv2_dense.mm.runner_cli import freeze_startup_objects
    assert gc.get_freeze_count() == 0
    alive = [object(), [1, 2], {'a': []}]  # noqa: F841 (must be alive when frozen)
    try:
        with caplog.at_level(logging.INFO, logger='test_runner_cli'):
            count = freeze_startup_objects(FakeRunner())
        assert count > 1000 and gc.get_freeze_count() > 1000
        assert f'gc.freeze: {count} objects' in caplog.text
        later = [[]]  # made after the freeze: the collector still tracks it
        assert gc.is_tracked(later) and gc.get_freeze_count() <= count  # frozen objects can only die
    finally:
        gc.unfreeze()  # the rest of the suite runs with a normal collector
    assert gc.get_freeze_count() == 0
