"""GcFreezeHook: the objects alive when training starts are frozen out of the garbage collector's passes."""
from __future__ import annotations

import gc
import logging
import re

import pytest

pytest.importorskip('mmengine')


class FakeRunner:
    def __init__(self) -> None:
        self.logger = logging.getLogger('test_gc_freeze')


def test_hook_freezes_what_is_alive_when_training_or_testing_starts_logs_it_and_unfreezes_after(caplog):
    from convnextv2_dense.mm.gc_freeze import GcFreezeHook
    assert gc.get_freeze_count() == 0
    hook, runner = GcFreezeHook(), FakeRunner()
    alive = [object(), [1, 2], {'a': []}]  # noqa: F841 (must be alive when frozen)
    try:
        with caplog.at_level(logging.INFO, logger='test_gc_freeze'):
            hook.before_train(runner)
        logged = re.search(r'gc.freeze: (\d+) objects alive before training', caplog.text)
        count = gc.get_freeze_count()
        assert logged and count > 1000 and count <= int(logged.group(1))  # frozen objects can only die
        later = [[]]  # made after the freeze: the collector still tracks it
        assert gc.is_tracked(later) and gc.get_freeze_count() <= count  # frozen objects can only die
        hook.after_train(runner)
        assert gc.get_freeze_count() == 0  # a validation or test after training collects as usual
        with caplog.at_level(logging.INFO, logger='test_gc_freeze'):
            hook.before_test(runner)  # tools/test.py
        assert gc.get_freeze_count() > 1000 and 'objects alive before testing' in caplog.text
        hook.after_test(runner)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()  # the rest of the suite runs with a normal collector


def test_hook_runs_after_every_other_hook_and_is_in_mm_registries():
    from convnextv2_dense.mm.gc_freeze import GcFreezeHook
    assert GcFreezeHook.priority == 'LOWEST'
    mmseg_registry = pytest.importorskip('mmseg.registry')
    import convnextv2_dense  # noqa: F401 (registers on import)
    assert mmseg_registry.HOOKS.get('GcFreezeHook') is GcFreezeHook


class HookList:
    def __init__(self, hooks: list) -> None:
        self.hooks = hooks


def test_has_gc_freeze_hook_finds_one_from_the_config():
    from mmengine.hooks import Hook

    from convnextv2_dense.mm.gc_freeze import GcFreezeHook, has_gc_freeze_hook
    assert not has_gc_freeze_hook(HookList([Hook()]))
    assert has_gc_freeze_hook(HookList([Hook(), GcFreezeHook()]))
