"""Keep Python's garbage collector off the objects that live for the whole run.

Each full pass of the collector walks every tracked object: on a training run, the half-million or so that
torch, the mm packages and transformers created at import, plus the runner and its model. On this project's
2-core CPU machine, in the demo UperNet's 600-iteration run, the four full passes during training took
249-313 ms each; the host launches nothing while one runs, so a GPU waits. :class:`GcFreezeHook` collects
once when training (or a test run) starts and moves everything then alive into the collector's permanent
generation (``gc.freeze``); the ten passes of the same run then took 0.3-17 ms each. Dataloader workers
forked after it (an epoch-based loop's; an iteration-based loop forks them when it is built, before any hook)
also stop writing to those objects' pages (the copy-on-write case in ``gc.freeze``'s documentation).

The schedule bases of ``configs/_base_`` list it in ``custom_hooks``, so mmseg's and mmdet's own
``tools/train.py`` and ``tools/test.py`` get it as ours do; ours add it to a config that lacks it.
"""
from __future__ import annotations

import gc
from typing import Any

from mmengine.hooks import Hook


class GcFreezeHook(Hook):
    """``gc.collect()`` then ``gc.freeze()`` when training (or a test run) starts, logging how many objects it
    froze, and ``gc.unfreeze()`` when it ends (a test after training in the same process collects as usual).

    Frozen objects are still freed when their last reference goes; only reference cycles among them
    wait for the unfreeze.
    """

    priority = 'LOWEST'  # after every other hook's before_train, so what they build is frozen too

    def before_train(self, runner: Any) -> None:
        self._freeze(runner, 'training')

    def after_train(self, runner: Any) -> None:
        gc.unfreeze()

    def before_test(self, runner: Any) -> None:
        self._freeze(runner, 'testing')

    def after_test(self, runner: Any) -> None:
        gc.unfreeze()

    @staticmethod
    def _freeze(runner: Any, phase: str) -> None:
        gc.collect()
        gc.freeze()
        runner.logger.info(f'gc.freeze: {gc.get_freeze_count()} objects alive before {phase} left out of the '
                           "garbage collector's full passes")


def has_gc_freeze_hook(runner: Any) -> bool:
    """Whether ``runner`` has a :class:`GcFreezeHook` (from the config's ``custom_hooks`` or registered)."""
    return any(isinstance(hook, GcFreezeHook) for hook in runner.hooks)
